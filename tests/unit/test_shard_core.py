"""UserShard over an in-memory PartitionLog: group commit, idempotent retries, recovery."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kairos.config import Settings
from kairos.models import EventRecord, LogBatch, ProfileRecord, Record, ShardBlob, record_list_encoder
from kairos.partitions import PartitionMap
from kairos.segments.downloads import ExportQuery
from kairos.shard import ShardFailed, UserShard, WrongShard

from fakes import FakeLog


def log_batch(account: str, records: list) -> LogBatch:
    """A log entry whose users are the records' own identifiers (no merges involved)."""
    return LogBatch(account, [r.user for r in records], records)

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000_000
ALL_TIME = (0, 1 << 62)
ACCOUNT = "ACC-001-0001"


def settings(**changes: Any) -> Settings:
    base = dict(partitions=4, shards=2, dedupe_window_records=1000)
    base.update(changes)
    return Settings(**base)


def owned_users(pmap: PartitionMap, shard: int, n: int, account: str = ACCOUNT) -> list[str]:
    users = []
    i = 0
    while len(users) < n:
        user = f"identity:{i}"
        if pmap.shard_of(pmap.partition_of(account, user)) == shard:
            users.append(user)
        i += 1
    return users


def foreign_user(pmap: PartitionMap, shard: int, account: str = ACCOUNT) -> str:
    i = 0
    while pmap.shard_of(pmap.partition_of(account, f"identity:{i}")) == shard:
        i += 1
    return f"identity:{i}"


def blobs_for(pmap: PartitionMap, request_id: str, records: list[Record], account: str = ACCOUNT) -> list[ShardBlob]:
    by_partition: dict[int, list[Record]] = {}
    for record in records:
        by_partition.setdefault(pmap.partition_of(account, record.user), []).append(record)
    return [
        ShardBlob(p, f"{request_id}/{p}", record_list_encoder.encode(log_batch(account, group)))
        for p, group in sorted(by_partition.items())
    ]


def ev(user: str, ts: int = T0, name: str = "Charged", message_id: str | None = None, **props: Any) -> EventRecord:
    return EventRecord(user, ts, name, props, message_id)


@pytest.fixture
def log() -> FakeLog:
    return FakeLog()


@pytest.fixture
def pmap() -> PartitionMap:
    return PartitionMap(4, 2)


# --- writes then reads --------------------------------------------------------------


async def test_append_then_get_profile_sees_the_data(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(), log)
    user = owned_users(pmap, 0, 1)[0]
    kind, value = user.split(":")
    await shard.append(blobs_for(pmap, "r1", [
        ProfileRecord(user, T0, {"Name": "Ada", "Email": "ada@example.com"}, {"objectId": "o-1"}),
        ev(user, T0 + 2000, Amount=12.5),
        ev(user, T0 + 4000, Amount=3),
    ]))
    profile = await shard.get_profile(ACCOUNT, user)
    assert profile is not None
    assert profile[kind] == value
    assert profile["objectId"] == "o-1"
    assert profile["email"] == "ada@example.com"
    assert profile["profileData"] == {"Name": "Ada", "Email": "ada@example.com"}
    assert profile["events"] == {"Charged": {"count": 2, "first_seen": T0 // 1000 + 2, "last_seen": T0 // 1000 + 4}}
    assert await shard.get_profile(ACCOUNT, owned_users(pmap, 0, 2)[1]) is None
    other_account = next(a for a in (f"ACC-{i}" for i in range(100)) if pmap.shard_of(pmap.partition_of(a, user)) == 0)
    assert await shard.get_profile(other_account, user) is None
    assert await shard.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 2
    assert await shard.count_events(ACCOUNT, ExportQuery("Charged", T0 + 2000, T0 + 4000)) == 1
    assert log.entries() == 1


async def test_retried_append_with_same_batch_ids_is_applied_once(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(), log)
    users = owned_users(pmap, 0, 6)
    blobs = blobs_for(pmap, "req-7", [ev(u) for u in users])
    assert len(blobs) == 2  # both partitions of shard 0
    await shard.append(blobs)
    await shard.append(blobs)  # the ingest hop retried
    await shard.append(blobs[:1])
    assert await shard.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 6
    assert sorted(log.batch_ids()) == sorted(b.batch_id for b in blobs)  # the retry is not logged again


async def test_the_same_blob_twice_in_one_flush_is_applied_once(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(), log)
    blobs = blobs_for(pmap, "dup", [ev(u) for u in owned_users(pmap, 0, 4)])
    await asyncio.gather(*(shard.append(blobs) for _ in range(5)))
    assert await shard.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 4
    assert sorted(log.batch_ids()) == sorted(b.batch_id for b in blobs)


async def test_message_id_dedupe_through_the_shard(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(), log)
    user = owned_users(pmap, 0, 1)[0]
    await shard.append(blobs_for(pmap, "a", [ev(user, message_id="m-1")]))
    await shard.append(blobs_for(pmap, "b", [ev(user, message_id="m-1"), ev(user, message_id="m-2")]))
    assert await shard.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 2


# --- ownership --------------------------------------------------------------------------


async def test_wrong_shard_for_a_foreign_partition(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(), log)
    assert shard.partitions == [0, 2]
    blob = ShardBlob(1, "r/1", record_list_encoder.encode(log_batch(ACCOUNT, [ev("identity:x")])))
    with pytest.raises(WrongShard):
        await shard.append([blob])
    mixed = blobs_for(pmap, "m", [ev(u) for u in owned_users(pmap, 0, 2)]) + [blob]
    with pytest.raises(WrongShard):
        await shard.append(mixed)
    assert log.append_calls == 0
    assert await shard.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 0
    with pytest.raises(WrongShard):
        await shard.get_profile(ACCOUNT, foreign_user(pmap, 0))
    with pytest.raises(WrongShard):
        await shard.export_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME), partition=3, start=0, limit=10)


# --- log failures ------------------------------------------------------------------------


@pytest.mark.parametrize("committed", [False, True], ids=["nothing-written", "committed-reply-lost"])
async def test_failing_log_append_fails_the_shard_and_a_restart_counts_once(
    log: FakeLog, pmap: PartitionMap, committed: bool
) -> None:
    shard = UserShard(0, settings(), log)
    users = owned_users(pmap, 0, 3)
    blobs = blobs_for(pmap, "r1", [ev(u) for u in users])
    log.fail_with = ConnectionError("redis went away")
    log.commit_then_fail = committed
    with pytest.raises(ShardFailed, match="redis went away"):
        await shard.append(blobs)
    # Whether or not the entries reached the log, this process can no longer vouch for
    # its memory: it refuses everything until restarted.
    assert shard.failed
    with pytest.raises(ShardFailed):
        await shard.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME))
    # The restart replays whatever was committed; the caller's retry carries the same
    # batch ids and lands exactly once either way.
    log.fail_with = None
    restarted = UserShard(0, settings(), log)
    await restarted.append(blobs)
    await restarted.append(blobs)
    assert await restarted.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 3
    again = UserShard(0, settings(), log)
    assert await again.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 3


async def test_a_shard_whose_recovery_fails_reports_failure(log: FakeLog) -> None:
    async def unreachable(partition: int) -> bytes | None:
        raise ConnectionError("redis unreachable")

    log.load_snapshot = unreachable  # type: ignore[method-assign]
    shard = UserShard(0, settings(), log)
    with pytest.raises(ShardFailed, match="redis unreachable"):
        await shard.ready()
    assert shard.failed, "the actor layer restarts a failed shard; a silent half-alive one would never recover"


async def test_concurrent_snapshots_of_a_partition_never_regress(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(), log)
    partition = pmap.partitions_of(0)[0]
    users = [u for u in owned_users(pmap, 0, 40) if pmap.partition_of(ACCOUNT, u) == partition]
    await shard.append(blobs_for(pmap, "a", [ev(u) for u in users]))
    original = log.save_snapshot
    delays = iter([0.05, 0.0])

    async def save_out_of_order(p: int, data: bytes, covers: str, chunks: dict[str, bytes]) -> None:
        await asyncio.sleep(next(delays, 0.0))  # the older snapshot's write is the slow one
        await original(p, data, covers, chunks)

    log.save_snapshot = save_out_of_order  # type: ignore[method-assign]
    first = asyncio.ensure_future(shard.snapshot(partition))
    await asyncio.sleep(0)
    for name in ("b", "c", "d"):
        await shard.append(blobs_for(pmap, name, [ev(u) for u in users]))
    await asyncio.gather(first, shard.snapshot(partition))
    # The newest snapshot stands, and the log kept what it does not cover.
    restarted = UserShard(0, settings(), log)
    assert await restarted.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 4 * len(users)


async def test_undecodable_durable_batch_fails_the_shard_loudly(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(), log)
    with pytest.raises(ShardFailed):
        await shard.append([ShardBlob(0, "bad/0", b"\xc1 not msgpack")])
    assert shard.failed
    with pytest.raises(ShardFailed):
        await shard.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME))


# --- group commit -------------------------------------------------------------------------


async def test_concurrent_appends_land_once_and_are_group_committed(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(), log)
    users = owned_users(pmap, 0, 10)
    n = 60
    requests = [blobs_for(pmap, f"req-{i}", [ev(users[i % 10], T0 + i), ev(users[(i + 3) % 10], T0 + i)])
                for i in range(n)]
    await asyncio.gather(*(shard.append(b) for b in requests))
    assert await shard.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 2 * n
    expected_ids = sorted(b.batch_id for blobs in requests for b in blobs)
    assert sorted(log.batch_ids()) == expected_ids
    assert 1 <= log.append_calls < n


async def test_appends_arriving_during_a_flush_go_out_together_next(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(), log)
    users = owned_users(pmap, 0, 4)
    await shard.ready()
    gate = asyncio.Event()
    real_append = log.append
    flushes: list[int] = []

    async def slow_append(entries: list[tuple[int, str, bytes]]) -> list[str]:
        flushes.append(len(entries))
        await gate.wait()
        return await real_append(entries)

    log.append = slow_append  # type: ignore[method-assign]
    first = asyncio.ensure_future(shard.append(blobs_for(pmap, "first", [ev(users[0])])))
    for _ in range(5):
        await asyncio.sleep(0)
    assert flushes == [1] and not first.done()  # the first flush is in flight
    later = [asyncio.ensure_future(shard.append(blobs_for(pmap, f"later-{i}", [ev(users[i % 4])])))
             for i in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert not any(t.done() for t in later)  # not acknowledged before they are durable
    gate.set()
    await asyncio.gather(first, *later)
    assert flushes == [1, 20]  # one flush for the first, one for the 20 that waited meanwhile
    assert await shard.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 21


# --- recovery -----------------------------------------------------------------------------


async def snapshot_of_queries(shard: UserShard, users: list[str]) -> dict[str, Any]:
    return {
        "charged": await shard.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)),
        "viewed": await shard.count_events(ACCOUNT, ExportQuery("Viewed", *ALL_TIME)),
        "profiles": [await shard.get_profile(ACCOUNT, u) for u in users],
        "with_event": [
            await shard.export_profiles(ACCOUNT, ExportQuery("Viewed", *ALL_TIME), p, 0, 1000) for p in shard.partitions
        ],
        "profiles_with_event": await shard.count_profiles(ACCOUNT, ExportQuery("Viewed", *ALL_TIME)),
    }


async def write_history(shard: UserShard, pmap: PartitionMap, users: list[str], batches: int) -> None:
    for i in range(batches):
        u = users[i % len(users)]
        records: list[Record] = [
            ev(u, T0 + i * 1000, Amount=i),
            # A client retry repeats the record for the same user: each user's messageIds
            # alternate between two values, so half of its Viewed events are duplicates.
            ev(users[(i + 1) % len(users)], T0 + i * 1000 + 1, "Viewed",
               message_id=f"m-{(i + 1) % len(users)}-{(i // len(users)) % 2}"),
        ]
        if i % 4 == 0:
            records.append(ProfileRecord(u, T0 + i, {"Plan": "gold" if i % 8 else "free", "Step": i}))
        await shard.append(blobs_for(pmap, f"req-{i}", records))


async def test_restart_recovers_identical_state_from_the_log(log: FakeLog, pmap: PartitionMap) -> None:
    users = owned_users(pmap, 0, 5)
    first = UserShard(0, settings(), log)
    await write_history(first, pmap, users, 20)
    before = await snapshot_of_queries(first, users)
    assert before["charged"] == 20 and before["viewed"] == 10

    restarted = UserShard(0, settings(), log)
    assert await snapshot_of_queries(restarted, users) == before
    assert restarted.replayed_entries == log.entries() > 0
    # A retry that reaches the restarted shard is still recognised.
    await restarted.append(blobs_for(pmap, "req-3", [ev(users[3], T0 + 3000, Amount=3)]))
    assert await restarted.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 20


async def test_restart_after_snapshot_and_trim(log: FakeLog, pmap: PartitionMap) -> None:
    users = owned_users(pmap, 0, 5)
    config = settings(snapshot_every_records=6)
    first = UserShard(0, config, log)
    await write_history(first, pmap, users, 30)
    before = await snapshot_of_queries(first, users)
    appended = log.appended  # entries ever written

    assert set(log.snapshots) == set(first.partitions)
    assert log.entries() < appended  # the covered part of the streams was trimmed
    memory = await first.memory()
    assert memory["events"] == before["charged"] + before["viewed"]
    assert memory["log_bytes"] == sum(len(p) for s in log.streams.values() for _, _, p in s)

    restarted = UserShard(0, config, log)
    assert await snapshot_of_queries(restarted, users) == before
    assert restarted.replayed_entries <= log.entries() < appended
    # Retried batches from before the snapshot are still recognised after the restart.
    await restarted.append(blobs_for(pmap, "req-0", [ev(users[0], T0, Amount=0)]))
    await restarted.append(blobs_for(pmap, "req-fresh", [ev(users[0], T0, Amount=0)]))
    assert await restarted.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == before["charged"] + 1

    # And a second restart over the newer snapshot agrees again.
    again = UserShard(0, config, log)
    assert await again.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == before["charged"] + 1


async def test_snapshot_all_then_restart_replays_nothing(log: FakeLog, pmap: PartitionMap) -> None:
    users = owned_users(pmap, 0, 3)
    first = UserShard(0, settings(), log)
    await write_history(first, pmap, users, 8)
    before = await snapshot_of_queries(first, users)
    await first.snapshot_all()
    restarted = UserShard(0, settings(), log)
    assert await snapshot_of_queries(restarted, users) == before
    assert restarted.replayed_entries == 0


async def test_snapshot_is_taken_when_the_interval_passes(log: FakeLog, pmap: PartitionMap) -> None:
    now = [1000.0]
    shard = UserShard(0, settings(snapshot_interval_s=10.0), log, clock=lambda: now[0])
    user = owned_users(pmap, 0, 1)[0]
    partition = pmap.partition_of(ACCOUNT, user)
    await shard.append(blobs_for(pmap, "a", [ev(user)]))
    assert log.snapshots == {}
    now[0] += 11
    await shard.append(blobs_for(pmap, "b", [ev(user)]))
    # The snapshot is written off the append's path, in steps: it lands a few turns of
    # the loop later.
    for _ in range(1000):
        if shard._snapshotter is not None and shard._snapshotter.done():
            break
        await asyncio.sleep(0)
    # Only the partition that received records is snapshotted.
    assert set(log.snapshots) == {partition}


# --- exports ------------------------------------------------------------------------------


async def test_export_events_pages_through_a_partition(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(), log)
    user = owned_users(pmap, 0, 1)[0]
    partition = pmap.partition_of(ACCOUNT, user)
    records: list[Record] = [ev(user, T0 + i * 1000, "Charged" if i % 2 else "Viewed", n=i) for i in range(15)]
    await shard.append(blobs_for(pmap, "r", records))
    seen: list[int] = []
    start: int | None = 0
    pages = 0
    while start is not None:
        page, start = await shard.export_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME), partition, start, 3)
        seen.extend(r["event_props"]["n"] for r in page)
        pages += 1
        assert pages < 10
    assert seen == [i for i in range(15) if i % 2]
    other = shard.partitions[1] if shard.partitions[0] == partition else shard.partitions[0]
    assert await shard.export_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME), other, 0, 3) == ([], None)


async def test_a_failing_snapshot_does_not_strand_queued_appends(log: FakeLog, pmap: PartitionMap) -> None:
    shard = UserShard(0, settings(snapshot_every_records=1), log)
    users = owned_users(pmap, 0, 2)
    await shard.ready()
    gate = asyncio.Event()

    async def failing_snapshot(partition: int, data: bytes, covers_id: str, chunks: dict[str, bytes]) -> None:
        await gate.wait()
        raise ConnectionError("redis went away during the snapshot")

    log.save_snapshot = failing_snapshot  # type: ignore[method-assign]
    first = asyncio.ensure_future(shard.append(blobs_for(pmap, "a", [ev(users[0])])))
    for _ in range(10):
        await asyncio.sleep(0)
    assert first.done()  # applied and acknowledged; the flusher now waits on the snapshot
    second = asyncio.ensure_future(shard.append(blobs_for(pmap, "b", [ev(users[1])])))
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    try:
        # The second caller must hear back: acknowledged, or an error it can retry on.
        await asyncio.wait_for(asyncio.gather(second, return_exceptions=True), timeout=0.5)
    finally:
        # Hygiene only: observe the dead flusher's exception so asyncio does not log it at GC.
        flusher = shard._flusher
        if flusher is not None and flusher.done() and not flusher.cancelled():
            flusher.exception()


async def test_snapshots_are_incremental_and_restore_across_sealed_chunks(log: FakeLog) -> None:
    """A snapshot stores each full (sealed) column chunk once; later snapshots add only
    new chunks, so their cost does not grow with the partition."""
    pmap = PartitionMap(1, 1)
    shard = UserShard(0, settings(partitions=1, shards=1), log)
    users = [f"identity:{i}" for i in range(500)]
    per_batch = 10_000
    for batch in range(7):  # 70,000 events: past one 65,536-row chunk
        records = [ev(users[i % 500], ts=T0 + batch * per_batch + i, Amount=i % 7) for i in range(per_batch)]
        await shard.append(blobs_for(pmap, f"b{batch}", records))
    await shard.snapshot(0)
    first_writes = log.chunk_writes
    # user, name, ts, prev and the Amount property's rows, tags and values: 7 columns,
    # each with one sealed chunk.
    assert first_writes == 7
    await shard.append(blobs_for(pmap, "more", [ev(users[0], ts=T0 + 10**6, Amount=1)]))
    await shard.snapshot(0)
    assert log.chunk_writes == first_writes, "a second snapshot rewrites no sealed chunk"

    restarted = UserShard(0, settings(partitions=1, shards=1), log)
    assert await restarted.count_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME)) == 70_001
    profile = await restarted.get_profile(ACCOUNT, users[0])
    assert profile is not None and profile["events"]["Charged"]["count"] == 141
    page, _ = await restarted.export_events(ACCOUNT, ExportQuery("Charged", *ALL_TIME), 0, 65_530, 10)
    assert [r["event_props"]["Amount"] for r in page] == [(65_530 + i) % per_batch % 7 for i in range(10)]
