"""The journey runner over a fake store: each step's changes and how far it read are
committed together, so a runner that dies at the commit, before or after Redis applied
it, is replaced by one that sends each message exactly once."""

from __future__ import annotations

from typing import Any

import pytest

from kairos import keys
from kairos.journeys.model import SavedJourney, Trigger, trigger_list_encoder
from kairos.journeys.runner import JourneyRunner
from kairos.partitions import PartitionMap
from fakes import FakeJourneyStore

pytestmark = pytest.mark.timeout(30)

ACCOUNT = "ACC-RUN-0001"
DAY = 86_400_000
T0 = 1_790_000_000_000
PMAP = PartitionMap(4, 1)
TRIAL = {"entry": {"event": "Trial Started"}, "start": "week",
         "nodes": {"week": {"type": "wait", "duration": "7d", "next": "ask"},
                   "ask": {"type": "send", "channel": "email", "message": {"subject": "Upgrade?", "text": "Upgrade?"}}}}


class Catalog:
    def __init__(self, journeys: list[SavedJourney]) -> None:
        self.journeys = journeys

    async def everything(self) -> dict[str, list[SavedJourney]]:
        return {ACCOUNT: self.journeys}

    async def all(self, account: str) -> list[SavedJourney]:
        return self.journeys if account == ACCOUNT else []

    async def accounts(self) -> list[str]:
        return [ACCOUNT]


class NoSegments:
    async def get(self, account: str, name: str) -> Any:
        return None


class NoLookups:
    async def matching(self, *args: Any) -> list[bool]:
        raise AssertionError("no branch in these journeys")

    async def time_zones(self, *args: Any) -> list[str | None]:
        raise AssertionError("no time-of-day wait in these journeys")

    async def segment_users(self, *args: Any) -> list[str]:
        return []


class Clock:
    manual = True

    def __init__(self) -> None:
        self.now = T0

    async def now_ms(self) -> int:
        return self.now


def runner(store: FakeJourneyStore, clock: Clock) -> JourneyRunner:
    failures: list[BaseException] = []
    made = JourneyRunner(store, Catalog([SavedJourney("trial", 1, "active", {1: TRIAL})]),  # type: ignore[arg-type]
                         NoSegments(), NoLookups(), clock, on_failure=failures.append)  # type: ignore[arg-type]
    return made


def forward(store: FakeJourneyStore, users: list[str]) -> None:
    by_partition: dict[int, list[Trigger]] = {}
    for user in users:
        by_partition.setdefault(PMAP.partition_of(ACCOUNT, user), []).append(
            Trigger(ACCOUNT, user, "Trial Started", T0, {}))
    for partition, triggers in by_partition.items():
        store.add(keys.journey_inbox(partition), {b"t": trigger_list_encoder.encode(triggers)})


@pytest.mark.parametrize("failure", ["before", "after"])
async def test_a_runner_that_dies_at_its_commit_is_replaced_without_a_lost_or_repeated_send(failure: str) -> None:
    store, clock = FakeJourneyStore(PMAP, PMAP.partitions_of(0)), Clock()
    users = [f"u{i}" for i in range(300)]
    forward(store, users)
    first = runner(store, clock)
    await first.load()
    assert await first.step() == 300
    assert len(store.positions) == 300 and store.outbox == []
    clock.now += 7 * DAY
    store.fail = failure
    with pytest.raises(ConnectionError):
        await first.step()
    assert first.failure is not None
    assert len(store.outbox) == (300 if failure == "after" else 0)
    second = runner(store, clock)
    await second.load()
    await second.step()
    await second.step()
    assert sorted(s.user for s in store.outbox) == sorted(users)
    assert len({s.id for s in store.outbox}) == 300
    assert store.positions == {}
    assert store.stats[(ACCOUNT, "trial")]["v1|node|ask|sent|-"] == 300
    assert store.stats[(ACCOUNT, "trial")]["v1|node|week|waiting"] == 0


async def test_inputs_are_read_once_across_a_restart() -> None:
    store, clock = FakeJourneyStore(PMAP, PMAP.partitions_of(0)), Clock()
    forward(store, ["a", "b"])
    first = runner(store, clock)
    await first.load()
    await first.step()
    forward(store, ["c"])
    store.fail = "before"
    with pytest.raises(ConnectionError):
        await first.step()
    second = runner(store, clock)
    await second.load()
    assert await second.step() == 1  # "c" again: its step never committed
    assert await second.step() == 0
    assert store.stats[(ACCOUNT, "trial")]["v1|entered"] == 3


async def test_a_failed_load_fails_the_runner() -> None:
    store, clock = FakeJourneyStore(PMAP, PMAP.partitions_of(0)), Clock()

    async def broken() -> dict[int, dict[str, str]]:
        raise ConnectionError("Redis away")

    store.load_cursors = broken  # type: ignore[method-assign]
    made = runner(store, clock)
    with pytest.raises(ConnectionError):
        await made.load()
    assert made.failure is not None
