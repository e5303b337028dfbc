"""Live segments on the shard core: signals as records are applied and as time moves,
and incremental membership that always equals a full evaluation."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from kairos.config import Settings
from kairos.models import EventRecord, ProfileRecord, Record, ShardBlob, record_list_encoder
from kairos.partitions import PartitionMap
from kairos.segments.catalog import SavedSegment
from kairos.segments.definition import parse_segment
from kairos.segments.evaluate import StoreQuery
from kairos.segments.live import Signal
from kairos.segments.live_runner import LiveSegmentRunner
from kairos.segments.timing import UTC
from kairos.shard import UserShard
from fakes import FakeLog
from tests.unit.test_shard_core import ACCOUNT, log_batch

pytestmark = pytest.mark.timeout(60)

HOUR, DAY = 3_600_000, 86_400_000
T0 = 1_790_000_000_000
PMAP = PartitionMap(4, 2)


class Catalog:
    def __init__(self) -> None:
        self.saved: dict[str, list[SavedSegment]] = {}

    def put(self, name: str, definition: Any, version: int = 1) -> None:
        kept = [s for s in self.saved.get(ACCOUNT, []) if s.name != name]
        self.saved[ACCOUNT] = kept + [SavedSegment(name, definition, live=True, version=version)]

    async def all_live(self) -> dict[str, list[SavedSegment]]:
        return dict(self.saved)

    async def live(self, account: str) -> list[SavedSegment]:
        return list(self.saved.get(account, []))


class Sink:
    def __init__(self) -> None:
        self.signals: list[Signal] = []
        self.down = False

    async def emit(self, signals: list[Signal]) -> None:
        if self.down:
            raise ConnectionError("signal log unreachable")
        self.signals.extend(signals)

    def take(self) -> list[tuple[str, str, bool]]:
        out = [(s.segment, s.user, s.entered) for s in self.signals]
        self.signals = []
        return out


class World:
    def __init__(self) -> None:
        self.now = T0
        self.catalog, self.sink = Catalog(), Sink()
        self.runner = LiveSegmentRunner(self.catalog, self.sink, tick_s=3600, clock_ms=lambda: self.now)
        settings = Settings(partitions=4, shards=2, dedupe_window_records=1000)
        self.shard = UserShard(0, settings, FakeLog(), live=self.runner)
        self.calls = 0

    async def append(self, records: list[Record]) -> None:
        self.calls += 1
        by_partition: dict[int, list[Record]] = {}
        for record in records:
            by_partition.setdefault(PMAP.partition_of(ACCOUNT, record.user), []).append(record)
        await self.shard.append([
            ShardBlob(p, f"c{self.calls}/{p}", record_list_encoder.encode(log_batch(ACCOUNT, group)))
            for p, group in by_partition.items()
        ])

    async def tick(self) -> None:
        await self.runner.tick(self.shard._states)


def users(n: int) -> list[str]:
    found, i = [], 0
    while len(found) < n:
        key = f"identity:{i}"
        if PMAP.shard_of(PMAP.partition_of(ACCOUNT, key)) == 0:
            found.append(key)
        i += 1
    return found


async def test_a_purchase_enters_the_segment_and_time_takes_the_user_out() -> None:
    world = World()
    world.catalog.put("Recent buyers", {"did": "Charged", "within": "1d"})
    await world.shard.ready()
    ann, bob = users(2)
    await world.append([EventRecord(ann, T0 - HOUR, "Charged", {"Amount": 5}),
                        EventRecord(bob, T0 - 2 * DAY, "Charged", {})])
    assert world.sink.take() == [("Recent buyers", ann, True)]  # out before the upload's answer
    world.now = T0 - HOUR + DAY  # the purchase is exactly a day old: still inside
    await world.tick()
    assert world.sink.take() == []
    world.now += 1
    await world.tick()
    assert world.sink.take() == [("Recent buyers", ann, False)]
    await world.tick()
    assert world.sink.take() == []  # nothing left to expire


async def test_inaction_enters_when_the_last_event_ages_out() -> None:
    world = World()
    world.catalog.put("Lapsed", {"all": [{"did": "App Opened"}, {"did_not": "App Opened", "within": "7d"}]})
    await world.shard.ready()
    (ann,) = users(1)
    await world.append([EventRecord(ann, T0, "App Opened", {})])
    assert world.sink.take() == []
    world.now = T0 + 7 * DAY + 1
    await world.tick()
    assert world.sink.take() == [("Lapsed", ann, True)]
    await world.append([EventRecord(ann, world.now, "App Opened", {})])
    assert world.sink.take() == [("Lapsed", ann, False)]


async def test_a_new_version_starts_from_its_members_without_signals() -> None:
    world = World()
    await world.shard.ready()
    ann, bob = users(2)
    await world.append([EventRecord(ann, T0, "Charged", {"Amount": 900}), EventRecord(bob, T0, "Charged", {"Amount": 5})])
    world.catalog.put("Big", {"did": "Charged", "sum": "Amount", "op": "gte", "value": 100})
    assert await world.shard.refresh_live(ACCOUNT) == {"Big": 1}
    assert world.sink.take() == []
    assert await world.shard.live_members(ACCOUNT, "Big") == [ann]
    world.catalog.put("Big", {"did": "Charged", "sum": "Amount", "op": "gte", "value": 1}, version=2)
    await world.shard.refresh_live(ACCOUNT)
    assert sorted(await world.shard.live_members(ACCOUNT, "Big")) == sorted([ann, bob])
    await world.append([EventRecord(bob, T0, "Refund", {})])
    assert world.sink.take() == []
    world.catalog.saved = {}
    assert await world.shard.refresh_live(ACCOUNT) == {}
    await world.append([EventRecord(users(3)[2], T0, "Charged", {"Amount": 500})])
    assert world.sink.take() == []


async def test_signals_wait_while_their_log_is_down() -> None:
    world = World()
    world.catalog.put("Buyers", {"did": "Charged"})
    await world.shard.ready()
    ann, bob = users(2)
    world.sink.down = True
    await world.append([EventRecord(ann, T0, "Charged", {})])  # acknowledged all the same
    world.sink.down = False
    await world.append([EventRecord(bob, T0, "Charged", {})])
    assert world.sink.take() == [("Buyers", ann, True), ("Buyers", bob, True)]


LIVE = {
    "week buyers": {"did": "Charged", "within": "7d"},
    "spenders": {"did": "Charged", "within": {"from": "10d", "to": "2d"}, "sum": "Amount", "op": "gte", "value": 100},
    "lapsed": {"all": [{"did": "Viewed"}, {"did_not": "Viewed", "within": "3d"}]},
    "new": {"first_time": "Viewed", "within": "5d"},
    "funnel": {"sequence": ["Viewed", "Charged"], "gap": "1d", "within": "6d"},
    "young": {"all": [{"profile": "Age", "op": "lt", "value": 30}, {"profile": "Signup", "op": "after", "value": "4d"}]},
    "overdue": {"did": "Charged", "where": [{"property": "DeliverBy", "op": "before", "value": "now"}]},
}


async def test_live_membership_always_equals_a_full_evaluation() -> None:
    """Random uploads, profile writes, merges and clock moves; after each step the live
    members equal a full evaluation, and replaying the signals gives the members too."""
    world = World()
    for name, definition in LIVE.items():
        world.catalog.put(name, definition)
    await world.shard.ready()
    rng = random.Random(7)
    people = users(40)
    merged: set[str] = set()
    from_signals: dict[str, set[str]] = {name: set() for name in LIVE}
    for step in range(120):
        world.now += rng.choice([0, HOUR, 6 * HOUR, DAY, 2 * DAY + 7])
        await world.tick()
        alive = [p for p in people if p not in merged]
        roll = rng.random()
        if roll < 0.1 and len(alive) > 2:
            source, into = rng.sample(alive, 2)
            exports = await world.shard.seal(ACCOUNT, [(source, into)])
            await world.shard.absorb(ACCOUNT, [(into, exports[0])])
            merged.add(source)
        else:
            records: list[Record] = []
            for _ in range(rng.randrange(1, 8)):
                who = rng.choice(alive)
                ts = world.now - rng.randrange(12 * DAY)
                if rng.random() < 0.2:
                    signup = (world.now - rng.randrange(8 * DAY)) // 1000
                    records.append(ProfileRecord(who, ts, {"Age": rng.randrange(15, 45), "Signup": signup}))
                else:
                    deliver_by = (world.now + rng.randrange(-2 * DAY, 4 * DAY)) // 1000
                    records.append(EventRecord(who, ts, rng.choice(["Viewed", "Charged"]),
                                               {"Amount": rng.randrange(0, 90), "DeliverBy": deliver_by}))
            await world.append(records)
        for signal in world.sink.signals:
            (from_signals[signal.segment].add if signal.entered else from_signals[signal.segment].discard)(signal.user)
        world.sink.signals = []
        for name, definition in LIVE.items():
            live = set(await world.shard.live_members(ACCOUNT, name))
            assert live == full(world, definition), (step, name)
            assert from_signals[name] == live, (step, name)


def full(world: World, definition: Any) -> set[str]:
    members: set[str] = set()
    for state in world.shard._states.values():
        store = state.account(ACCOUNT)
        if store is not None:
            mask = StoreQuery(store, world.now, UTC).users(parse_segment(definition))
            members.update(store.user_keys[int(u)] for u in np.flatnonzero(mask))
    return members
