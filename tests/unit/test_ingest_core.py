"""Ingestor: one blob per partition, grouped by owning shard, deterministic batch ids."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from kairos.identity_graph import Merge
from kairos.ingest import Ingestor
from kairos.models import (
    EventRecord, LogBatch, ProfileRecord, Record, ShardBlob, encode_upload, log_entry_decoder,
    routable_decoder,
)
from kairos.partitions import PartitionMap, partition_of

from fakes import FakeGraph

pytestmark = pytest.mark.timeout(60)

ACCOUNT = "ACC-111-2222"
T0 = 1_700_000_000_000


def records(n: int) -> list[Record]:
    out: list[Record] = []
    for i in range(n):
        user = f"identity:{i % 37}"
        if i % 5 == 0:
            out.append(ProfileRecord(user, T0 + i, {"Step": i}, None, f"p-{i}"))
        else:
            out.append(EventRecord(user, T0 + i, "Charged", {"i": i}))
    return out


class RecordingMerges:
    def __init__(self) -> None:
        self.completed: list[Merge] = []

    async def complete(self, merges: list[Merge]) -> None:
        await asyncio.sleep(0)
        self.completed.extend(merges)


async def no_send(shard: int, blobs: list[ShardBlob]) -> dict[str, list[int]]:
    raise AssertionError("route() must not send")


def new_ingestor(pmap: PartitionMap, send=no_send, graph: FakeGraph | None = None) -> Ingestor:  # type: ignore[no-untyped-def]
    return Ingestor(pmap, send, graph or FakeGraph(), RecordingMerges())


def route(ingestor: Ingestor, call_id: str, uploads: list[tuple[str, list[Record]]]) -> dict[int, list[ShardBlob]]:
    """Route as the ingest actor does, from the bytes the gateway sends, with each
    record's user being its own identifier."""
    batches = [(a, routable_decoder.decode(encode_upload(r)), [x.user for x in r]) for a, r in uploads]
    return ingestor.route(call_id, batches)[0]


def blobs_of(routed: dict[int, list[ShardBlob]]) -> list[ShardBlob]:
    return [blob for blobs in routed.values() for blob in blobs]


def test_route_groups_by_partition_and_owning_shard() -> None:
    pmap = PartitionMap(8, 3)
    ingestor = new_ingestor(pmap)
    recs = records(200)
    routed = route(ingestor, "call-1", [(ACCOUNT, recs)])

    for shard, blobs in routed.items():
        assert 0 <= shard < 3
        assert blobs, "a shard with nothing to do must not be called"
        for blob in blobs:
            assert blob.partition % 3 == shard, "blob routed to a shard that does not own its partition"
    # One blob per partition, and exactly the partitions the users hash to.
    partitions = [blob.partition for blob in blobs_of(routed)]
    assert len(partitions) == len(set(partitions))
    assert set(partitions) == {partition_of(ACCOUNT, r.user, 8) for r in recs}

    # Every record is in its user's partition blob, once, in the original order.
    total = 0
    for blob in blobs_of(routed):
        batch = log_entry_decoder.decode(blob.payload)
        assert batch.account == ACCOUNT
        assert batch.records == [r for r in recs if partition_of(ACCOUNT, r.user, 8) == blob.partition]
        total += len(batch.records)
    assert total == len(recs)


def test_route_keeps_accounts_apart() -> None:
    pmap = PartitionMap(4, 2)
    ingestor = new_ingestor(pmap)
    a, b = records(60), records(40)
    more_a = [EventRecord(f"identity:{i}", T0, "Later", {}) for i in range(10)]
    routed = route(ingestor, "call-2", [("ACCOUNT-A", a), ("ACCOUNT-B", b), ("ACCOUNT-A", more_a)])
    by_key: dict[tuple[str, int], list[Record]] = {}
    for blob in blobs_of(routed):
        batch = log_entry_decoder.decode(blob.payload)
        key = (batch.account, blob.partition)
        assert key not in by_key, "more than one blob for one account and partition"
        by_key[key] = batch.records
        assert all(partition_of(batch.account, r.user, 4) == blob.partition for r in batch.records)
    for account, recs in (("ACCOUNT-A", a + more_a), ("ACCOUNT-B", b)):
        for p in range(4):
            expected = [r for r in recs if partition_of(account, r.user, 4) == p]
            assert by_key.get((account, p), []) == expected
    assert len({blob.batch_id for blob in blobs_of(routed)}) == len(by_key)


def test_batch_ids_are_deterministic_from_the_call_id() -> None:
    pmap = PartitionMap(16, 4)
    recs = records(100)
    uploads = [(ACCOUNT, recs), ("ACC-OTHER", recs[:30])]
    first = route(new_ingestor(pmap), "call-42", uploads)
    retry = route(new_ingestor(PartitionMap(16, 4)), "call-42", uploads)
    assert first == retry  # same ids and same payload bytes for a retried call
    ids = [b.batch_id for b in blobs_of(first)]
    assert all(i.startswith("call-42/") for i in ids)
    assert len(set(ids)) == len(ids)
    other = route(new_ingestor(pmap), "call-43", uploads)
    assert {b.batch_id for b in blobs_of(other)}.isdisjoint(ids)


def test_the_same_user_in_two_accounts_can_land_in_different_partitions() -> None:
    ingestor = new_ingestor(PartitionMap(64, 1))
    recs = [EventRecord("identity:1", T0, "E", {})]
    a = route(ingestor, "r", [("ACCOUNT-A", recs)])[0][0]
    b = route(ingestor, "r", [("ACCOUNT-B", recs)])[0][0]
    assert a.partition == partition_of("ACCOUNT-A", "identity:1", 64)
    assert b.partition == partition_of("ACCOUNT-B", "identity:1", 64)
    assert a.partition != b.partition
    assert log_entry_decoder.decode(a.payload).account == "ACCOUNT-A"


def test_route_of_nothing_is_empty() -> None:
    ingestor = new_ingestor(PartitionMap(4, 2))
    assert route(ingestor, "r", []) == {}
    assert route(ingestor, "r", [(ACCOUNT, [])]) == {}


async def test_ingest_sends_once_per_shard_and_returns_the_count() -> None:
    pmap = PartitionMap(8, 3)
    calls: list[tuple[int, list[ShardBlob]]] = []

    async def send(shard: int, blobs: list[ShardBlob]) -> dict[str, list[int]]:
        await asyncio.sleep(0)
        calls.append((shard, blobs))
        return {}

    graph = FakeGraph()
    ingestor = new_ingestor(pmap, send, graph)
    a, b = records(300), records(20)
    uploads = [(ACCOUNT, encode_upload(a)), ("ACC-B", encode_upload(b))]
    assert await ingestor.ingest("call-9", uploads) == 320
    shards = [shard for shard, _ in calls]
    assert sorted(shards) == [0, 1, 2], "exactly one send per shard"
    assert graph.calls == 2, "one identity round trip per account, for all its new identifiers"
    # Each record went to the partition of the user the graph gave its identifier.
    seen = 0
    for _, blobs in calls:
        for blob in blobs:
            batch = log_entry_decoder.decode(blob.payload)
            for user, record in zip(batch.users, batch.records):
                assert graph.ids[(batch.account, record.user)] == user
                assert partition_of(batch.account, user, 8) == blob.partition
            seen += len(batch.records)
    assert seen == 320


async def test_ingest_is_done_only_when_every_shard_is() -> None:
    release = asyncio.Event()
    done: list[int] = []

    async def send(shard: int, blobs: list[ShardBlob]) -> dict[str, list[int]]:
        if shard == 1:
            await release.wait()
        done.append(shard)
        return {}

    ingestor = new_ingestor(PartitionMap(4, 2), send)
    recs = [EventRecord(f"identity:{i}", T0, "E", {}) for i in range(50)]
    task = asyncio.ensure_future(ingestor.ingest("r", [(ACCOUNT, encode_upload(recs))]))
    for _ in range(10):
        await asyncio.sleep(0)
    assert done == [0] and not task.done()
    release.set()
    assert await task == 50


async def test_ingest_propagates_a_shard_failure() -> None:
    async def send(shard: int, blobs: list[ShardBlob]) -> dict[str, list[int]]:
        if shard == 0:
            raise RuntimeError("shard 0 is down")
        return {}

    ingestor = new_ingestor(PartitionMap(4, 2), send)
    recs = [EventRecord(f"identity:{i}", T0, "E", {}) for i in range(50)]
    with pytest.raises(RuntimeError, match="shard 0 is down"):
        await ingestor.ingest("r", [(ACCOUNT, encode_upload(recs))])


def test_payload_is_the_log_batch_encoding() -> None:
    blob = route(new_ingestor(PartitionMap(1, 1)), "r", [(ACCOUNT, records(3))])[0][0]
    recs = records(3)
    assert msgspec.msgpack.decode(blob.payload, type=LogBatch) == LogBatch(ACCOUNT, [r.user for r in recs], recs)
    assert blob.partition == 0


def test_partition_map() -> None:
    pmap = PartitionMap(10, 3)
    assert pmap.partitions_of(0) == [0, 3, 6, 9]
    assert pmap.partitions_of(2) == [2, 5, 8]
    assert sorted(p for s in range(3) for p in pmap.partitions_of(s)) == list(range(10))
    assert all(pmap.shard_of(p) == s for s in range(3) for p in pmap.partitions_of(s))
    # Stable across processes: a fixed value, not Python's salted hash().
    assert partition_of("acct", "identity:42", 1024) == partition_of("acct", "identity:42", 1024)
    assert pmap.partition_of("acct", "identity:42") == partition_of("acct", "identity:42", 10)
    for bad in (0, 11, -1):
        with pytest.raises(ValueError):
            PartitionMap(10, bad)
