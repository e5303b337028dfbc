"""Merges across shards, in one process: ingest cores, two shard cores over in-memory
logs, the merge coordinator and an in-memory identity graph, wired as the actors wire
them but without Ray."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from kairos.config import Settings
from kairos.ingest import Ingestor
from kairos.merge import MergeCoordinator
from kairos.models import EventRecord, ProfileRecord, Record, ShardBlob, encode_upload
from kairos.partitions import PartitionMap
from kairos.segments.downloads import ExportQuery
from kairos.shard import UserShard

from fakes import FakeGraph, FakeLog

pytestmark = pytest.mark.timeout(60)

ACCOUNT = "ACC-MERGE-1"
T0 = 1_700_000_000_000
ALL_TIME = (0, 1 << 62)
SETTINGS = Settings(partitions=8, shards=2, dedupe_window_records=10_000)


class Cluster:
    """Shards, one identity graph, and as many ingest cores (each with its own cache) as
    a test asks for."""

    def __init__(self) -> None:
        self.pmap = PartitionMap(SETTINGS.partitions, SETTINGS.shards)
        self.logs = [FakeLog() for _ in range(SETTINGS.shards)]
        self.shards = [UserShard(i, SETTINGS, self.logs[i]) for i in range(SETTINGS.shards)]
        self.graph = FakeGraph()
        self.fail_absorb = 0
        self.coordinator = MergeCoordinator(self.pmap, self.graph, self.call_shard)
        self.ingestors: list[Ingestor] = []
        self._calls = itertools.count()

    async def call_shard(self, shard: int, method: str, *args: Any) -> Any:
        await asyncio.sleep(0)
        if method == "absorb" and self.fail_absorb:
            self.fail_absorb -= 1
            raise ConnectionError("the survivor's shard did not answer")
        return await getattr(self.shards[shard], method)(*args)

    async def send(self, shard: int, blobs: list[ShardBlob]) -> dict[str, list[int]]:
        await asyncio.sleep(0)
        return await self.shards[shard].append(blobs)

    def ingestor(self) -> Ingestor:
        core = Ingestor(self.pmap, self.send, self.graph, self.coordinator)
        self.ingestors.append(core)
        return core

    async def upload(self, records: list[Record], via: Ingestor | None = None) -> int:
        core = via or (self.ingestors[0] if self.ingestors else self.ingestor())
        return await core.ingest(f"call-{next(self._calls)}", [(ACCOUNT, encode_upload(records))])

    def user_of(self, identifier: str) -> str:
        return self.graph.ids[(ACCOUNT, identifier)]

    def shard_of(self, user: str) -> UserShard:
        return self.shards[self.pmap.shard_of(self.pmap.partition_of(ACCOUNT, user))]

    async def profile(self, identifier: str) -> dict[str, Any] | None:
        user = self.user_of(identifier)
        return await self.shard_of(user).get_profile(ACCOUNT, user)

    async def count(self, name: str) -> int:
        return sum([await s.count_events(ACCOUNT, ExportQuery(name, *ALL_TIME)) for s in self.shards])

    async def restart(self) -> None:
        self.shards = [UserShard(i, SETTINGS, self.logs[i]) for i in range(SETTINGS.shards)]
        for shard in self.shards:
            await shard.ready()


def ev(identifier: str, name: str = "Viewed", ts: int = T0, message_id: str | None = None, **aliases: str) -> EventRecord:
    return EventRecord(identifier, ts, name, {"n": 1}, message_id, aliases or None)


def login(identity: str, object_id: str, ts: int = T0, **props: Any) -> ProfileRecord:
    """CleverTap's onUserLogin: a profile that names both the customer id and the device."""
    return ProfileRecord(f"identity:{identity}", ts, props, {"objectId": object_id})


def on_two_shards(cluster: Cluster, first: str, second: str) -> bool:
    return cluster.shard_of(first) is not cluster.shard_of(second)


async def anonymous_then_known(cluster: Cluster, n_anonymous: int = 5, n_known: int = 3) -> tuple[str, str]:
    """An anonymous device and a known customer, created in that order, on two shards;
    returns their identifiers. Users are numbered in creation order, so the first
    device whose user lands on the other shard from the customer's is used."""
    await cluster.upload([ev("identity:cust", "Purchased") for _ in range(n_known)])
    for i in itertools.count():
        device = f"objectId:dev-{i}"
        await cluster.upload([ev(device, "Opened")])
        if on_two_shards(cluster, cluster.user_of(device), cluster.user_of("identity:cust")):
            break
    await cluster.upload([ev(device, "Opened") for _ in range(n_anonymous - 1)])
    return device, "identity:cust"


async def test_login_merges_the_device_history_into_the_customer_across_shards() -> None:
    cluster = Cluster()
    device, customer = await anonymous_then_known(cluster)
    opened_elsewhere = await cluster.count("Opened") - 5  # devices tried before one landed on the other shard
    customer_user, device_user = cluster.user_of(customer), cluster.user_of(device)
    assert customer_user < device_user  # the customer is older: it survives

    await cluster.upload([login("cust", device.split(":", 1)[1], T0 + 1000, Name="Ada")])

    assert cluster.user_of(device) == cluster.user_of(customer) == customer_user
    profile = await cluster.profile(device)
    assert profile is not None and profile == await cluster.profile(customer)
    assert profile["events"]["Purchased"]["count"] == 3
    assert profile["events"]["Opened"]["count"] == 5
    assert profile["profileData"] == {"Name": "Ada"}
    assert profile["identity"] == "cust"
    assert device.split(":", 1)[1] in profile["identities"]["objectId"]
    # The merged-away user is gone from its shard, and no event is counted twice.
    assert await cluster.shard_of(device_user).get_profile(ACCOUNT, device_user) is None
    assert await cluster.count("Opened") == 5 + opened_elsewhere
    assert await cluster.count("Purchased") == 3
    assert await cluster.graph.pending_merges() == []


async def test_events_for_either_identifier_after_the_merge_land_in_the_merged_profile() -> None:
    cluster = Cluster()
    early = cluster.ingestor()
    stale = cluster.ingestor()  # caches the device's old user before the merge
    device, customer = await anonymous_then_known(cluster)
    await cluster.upload([ev(device, "Warmup")], via=stale)
    device_user = cluster.user_of(device)

    await cluster.upload([login("cust", device.split(":", 1)[1])], via=early)
    # The stale ingest still maps the device to its old user: the old shard refuses the
    # records, and they are sent on to the survivor.
    await cluster.upload([ev(device, "After") for _ in range(4)], via=stale)
    await cluster.upload([ev(customer, "After") for _ in range(2)], via=stale)

    assert stale.rerouted == 4
    profile = await cluster.profile(customer)
    assert profile is not None
    assert profile["events"]["After"]["count"] == 6
    assert profile["events"]["Warmup"]["count"] == 1
    assert await cluster.shard_of(device_user).get_profile(ACCOUNT, device_user) is None
    assert await cluster.count("After") == 6


async def test_concurrent_writers_racing_a_merge_lose_and_double_nothing() -> None:
    cluster = Cluster()
    writers = [cluster.ingestor() for _ in range(4)]
    device, customer = await anonymous_then_known(cluster, n_anonymous=1, n_known=1)
    before = await cluster.count("Race")
    for writer in writers:  # every writer has both users cached, as before the merge
        await cluster.upload([ev(device, "Warm"), ev(customer, "Warm")], via=writer)

    async def write(writer: Ingestor, k: int) -> None:
        for i in range(10):
            await cluster.upload([ev(device if (i + k) % 2 else customer, "Race") for _ in range(3)], via=writer)

    async def merge() -> None:
        await asyncio.sleep(0)
        await cluster.upload([login("cust", device.split(":", 1)[1])], via=writers[0])

    await asyncio.gather(*(write(w, k) for k, w in enumerate(writers)), merge())

    assert before == 0
    assert await cluster.count("Race") == 4 * 10 * 3
    profile = await cluster.profile(device)
    assert profile is not None and profile["events"]["Race"]["count"] == 120
    assert profile["events"]["Warm"]["count"] == 8


async def test_a_merge_survives_a_shard_restart_replaying_seal_and_absorb() -> None:
    cluster = Cluster()
    device, customer = await anonymous_then_known(cluster)
    await cluster.upload([login("cust", device.split(":", 1)[1], Plan="gold")])
    before = (await cluster.profile(customer), await cluster.count("Opened"), await cluster.count("Purchased"))

    await cluster.restart()

    assert (await cluster.profile(customer), await cluster.count("Opened"), await cluster.count("Purchased")) == before
    assert await cluster.profile(device) == before[0]


async def test_a_merge_cut_off_between_seal_and_absorb_is_finished_by_the_sweep() -> None:
    cluster = Cluster()
    device, customer = await anonymous_then_known(cluster)
    opened = await cluster.count("Opened")
    cluster.fail_absorb = 1
    with pytest.raises(ConnectionError):
        await cluster.upload([login("cust", device.split(":", 1)[1])])
    # Sealed but not absorbed: the device's events are in no profile for now.
    assert len(await cluster.graph.pending_merges()) == 1
    assert await cluster.count("Opened") == opened - 5

    assert await cluster.coordinator.sweep(older_than_s=0) == 1

    profile = await cluster.profile(device)
    assert profile is not None and profile["events"]["Opened"]["count"] == 5
    assert await cluster.count("Opened") == opened
    assert await cluster.graph.pending_merges() == []
    # Sweeping again, or repeating the whole merge, changes nothing.
    await cluster.coordinator.complete([cluster.graph.merges[-1]])
    assert await cluster.count("Opened") == opened


async def test_a_chain_of_merges_ends_in_the_oldest_user_with_every_event_once() -> None:
    cluster = Cluster()
    await cluster.upload([ev("identity:a", "A")])
    await cluster.upload([ev("objectId:b", "B"), ev("objectId:b", "B")])
    await cluster.upload([ev("anonymousId:c", "C") for _ in range(3)])
    # c ties to b (b survives), then b ties to a (a survives) - in one upload.
    await cluster.upload([
        ev("objectId:b", "Link", anonymousId="c"),
        ev("identity:a", "Link", objectId="b"),
    ])
    users = {cluster.user_of(i) for i in ("identity:a", "objectId:b", "anonymousId:c")}
    assert users == {cluster.user_of("identity:a")}
    profile = await cluster.profile("anonymousId:c")
    assert profile is not None
    assert {name: e["count"] for name, e in profile["events"].items()} == {"A": 1, "B": 2, "C": 3, "Link": 2}
    for name, count in (("A", 1), ("B", 2), ("C", 3), ("Link", 2)):
        assert await cluster.count(name) == count


async def test_a_retried_record_is_still_deduplicated_after_its_user_was_merged() -> None:
    cluster = Cluster()
    device, _ = await anonymous_then_known(cluster, n_anonymous=1)
    await cluster.upload([ev(device, "Tapped", message_id="m-1")])
    await cluster.upload([login("cust", device.split(":", 1)[1])])
    # The client never saw the first answer and sends the same record again.
    await cluster.upload([ev(device, "Tapped", message_id="m-1")])
    assert await cluster.count("Tapped") == 1


async def test_properties_merge_by_latest_write_per_property() -> None:
    cluster = Cluster()
    device, customer = await anonymous_then_known(cluster, n_anonymous=1, n_known=1)
    await cluster.upload([
        ProfileRecord(customer, T0 + 1_000, {"City": "Pune", "Plan": "free"}),
        ProfileRecord(device, T0 + 5_000, {"City": "Goa", "Theme": "dark"}),
        ProfileRecord(customer, T0 + 9_000, {"Plan": "gold"}),
    ])
    await cluster.upload([login("cust", device.split(":", 1)[1], T0 + 2_000)])
    profile = await cluster.profile(customer)
    assert profile is not None
    # City: the device wrote it later. Plan: the customer's later write. Theme: only one had it.
    assert profile["profileData"] == {"City": "Goa", "Plan": "gold", "Theme": "dark"}
    assert profile["first_seen"] == T0 // 1000
    assert profile["last_seen"] == (T0 + 9_000) // 1000


# --- demerge --------------------------------------------------------------------------


async def test_demerge_gives_each_user_back_what_it_brought() -> None:
    cluster = Cluster()
    device, customer = await anonymous_then_known(cluster)
    await cluster.upload([
        ProfileRecord(customer, T0 + 1_000, {"Plan": "gold"}),
        ProfileRecord(device, T0 + 2_000, {"Theme": "dark"}),
    ])
    await cluster.upload([login("cust", device.split(":", 1)[1], T0 + 3_000)])
    await cluster.upload([ev(device, "AfterMerge"), ev(customer, "AfterMerge")])
    merged = cluster.user_of(customer)
    totals = {name: await cluster.count(name) for name in ("Opened", "Purchased", "AfterMerge")}

    assert await cluster.coordinator.demerge(ACCOUNT, merged)

    assert cluster.user_of(device) != cluster.user_of(customer)
    device_profile, customer_profile = await cluster.profile(device), await cluster.profile(customer)
    assert device_profile is not None and customer_profile is not None
    assert {k: v["count"] for k, v in device_profile["events"].items()} == {"Opened": 5}
    assert device_profile["profileData"] == {"Theme": "dark"}
    assert device_profile["identities"] == {"objectId": [device.split(":", 1)[1]]}
    # Activity after the merge cannot be told apart: it stays with the surviving customer.
    assert {k: v["count"] for k, v in customer_profile["events"].items()} == {"Purchased": 3, "AfterMerge": 2}
    assert customer_profile["identities"] == {"identity": ["cust"]}
    assert customer_profile["profileData"] == {"Plan": "gold", "Theme": "dark"}
    # Nothing lost or doubled, the merged user is gone, and the split is durable.
    assert {name: await cluster.count(name) for name in totals} == totals
    assert await cluster.shard_of(merged).get_profile(ACCOUNT, merged) is None
    assert await cluster.graph.pending_merges() == []
    before = (device_profile, customer_profile)
    await cluster.restart()
    assert (await cluster.profile(device), await cluster.profile(customer)) == before
    # New records for the device reach its own profile again.
    await cluster.upload([ev(device, "Later")])
    later = await cluster.profile(device)
    assert later is not None and later["events"]["Later"]["count"] == 1


async def test_demerge_of_a_chain_splits_every_merged_user_apart() -> None:
    cluster = Cluster()
    await cluster.upload([ev("identity:a", "A")])
    await cluster.upload([ev("objectId:b", "B"), ev("objectId:b", "B")])
    await cluster.upload([ev("anonymousId:c", "C") for _ in range(3)])
    await cluster.upload([ev("objectId:b", "Link", anonymousId="c")])  # c into b
    await cluster.upload([ev("identity:a", "Link", objectId="b")])  # b (with c) into a
    assert await cluster.coordinator.demerge(ACCOUNT, cluster.user_of("identity:a"))
    counts = {}
    for identifier in ("identity:a", "objectId:b", "anonymousId:c"):
        profile = await cluster.profile(identifier)
        assert profile is not None
        counts[identifier] = {k: v["count"] for k, v in profile["events"].items()}
    assert len({cluster.user_of(i) for i in counts}) == 3
    assert counts["anonymousId:c"] == {"C": 3}
    assert counts["objectId:b"] == {"B": 2, "Link": 1}  # b's link event predates its merge into a
    assert counts["identity:a"] == {"A": 1, "Link": 1}


async def test_demerge_of_a_user_that_merged_nothing_is_refused() -> None:
    cluster = Cluster()
    await cluster.upload([ev("identity:solo", "E")])
    assert not await cluster.coordinator.demerge(ACCOUNT, cluster.user_of("identity:solo"))
    profile = await cluster.profile("identity:solo")
    assert profile is not None and profile["events"]["E"]["count"] == 1


async def test_a_demerge_cut_off_midway_is_finished_by_the_sweep() -> None:
    cluster = Cluster()
    device, customer = await anonymous_then_known(cluster)
    await cluster.upload([login("cust", device.split(":", 1)[1])])
    opened = await cluster.count("Opened")
    cluster.fail_absorb = 1
    with pytest.raises(ConnectionError):
        await cluster.coordinator.demerge(ACCOUNT, cluster.user_of(customer))
    assert await cluster.coordinator.sweep(older_than_s=0) == 1
    device_profile = await cluster.profile(device)
    assert device_profile is not None and device_profile["events"]["Opened"]["count"] == 5
    assert await cluster.count("Opened") == opened


# --- races found in review -----------------------------------------------------------


async def test_a_message_id_retried_while_its_merge_is_half_done_counts_once() -> None:
    cluster = Cluster()
    device, _ = await anonymous_then_known(cluster, n_anonymous=1)
    await cluster.upload([ev(device, "Tap", message_id="m-1")])
    cluster.fail_absorb = 1  # sealed, not yet absorbed
    with pytest.raises(ConnectionError):
        await cluster.upload([login("cust", device.split(":", 1)[1])])
    # The client never saw the first answer; its retry now resolves to the survivor.
    await cluster.upload([ev(device, "Tap", message_id="m-1")])
    assert await cluster.coordinator.sweep(older_than_s=0) == 1
    assert await cluster.count("Tap") == 1
    profile = await cluster.profile(device)
    assert profile is not None and profile["events"]["Tap"]["count"] == 1


async def test_a_merge_repeated_after_a_demerge_changes_nothing() -> None:
    cluster = Cluster()
    device, customer = await anonymous_then_known(cluster)
    await cluster.upload([login("cust", device.split(":", 1)[1])])
    merge = cluster.graph.merges[-1]
    cluster.graph.pending[(merge.account, merge.user)] = merge  # as if clearing it had failed
    await cluster.coordinator.complete([])  # nothing else pending meanwhile
    merged = cluster.user_of(customer)
    del cluster.graph.pending[(merge.account, merge.user)]
    assert await cluster.coordinator.demerge(ACCOUNT, merged)
    opened, purchased = await cluster.count("Opened"), await cluster.count("Purchased")
    # The old merge is finished again: its survivor was split, so it follows the forward
    # to the part that kept the survivor's identifiers, which must know it is done.
    await cluster.coordinator.complete([merge])
    assert (await cluster.count("Opened"), await cluster.count("Purchased")) == (opened, purchased)
    customer_profile = await cluster.profile(customer)
    assert customer_profile is not None and "Opened" not in customer_profile["events"]


async def test_a_rerouted_record_adds_its_identifier_to_the_survivor() -> None:
    cluster = Cluster()
    stale = cluster.ingestor()
    await cluster.upload([ev("identity:a", "A")])
    await cluster.upload([ev("objectId:b", "B")], via=stale)  # stale caches b's user
    await cluster.upload([ProfileRecord("identity:a", T0, {}, {"objectId": "b"})], via=cluster.ingestor())
    await cluster.upload([ev("objectId:b", "Late")], via=stale)  # refused, sent on to a
    profile = await cluster.profile("identity:a")
    assert profile is not None
    assert profile["identities"] == {"identity": ["a"], "objectId": ["b"]}


def test_refusals_map_back_even_after_the_placement_cache_was_reset() -> None:
    from kairos.models import encode_upload as encode, routable_decoder

    cluster = Cluster()
    core = cluster.ingestor()
    records = [ev(f"identity:{i}") for i in range(10)]
    batch = routable_decoder.decode(encode(records))
    uploads = [(ACCOUNT, batch, [str(i) for i in range(10)])]
    _, blobs_of = core.route("c", uploads)
    core._places.clear()  # the cache is bounded: it may be dropped between route and refusal
    carried = {key: core.positions_of(uploads, None, *where) for key, where in blobs_of.items()}
    assert sorted(i for positions in carried.values() for _, i in positions) == list(range(10))
