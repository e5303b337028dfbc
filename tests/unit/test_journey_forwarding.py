"""Shards forward to journeys exactly the applied events some journey reacts to, keyed
by the log id of their batch, and again on replay (the inbox keeps one of each)."""

from __future__ import annotations

import pytest

from kairos.config import Settings
from kairos.journeys.model import Trigger
from kairos.log import stream_id_order
from kairos.models import EventRecord, ProfileRecord, ShardBlob, record_list_encoder
from kairos.shard import UserShard
from fakes import FakeLog
from tests.unit.test_shard_core import log_batch

pytestmark = pytest.mark.timeout(30)

ACCOUNT, OTHER = "ACC-FWD-0001", "ACC-FWD-0002"
T0 = 1_790_000_000_000


class Inbox:
    """TriggerForwarding's shard-facing side, with the inbox as a dict keyed like the stream."""

    def __init__(self) -> None:
        self.interest: dict[str, frozenset[str]] = {ACCOUNT: frozenset({"Added To Cart", "Charged"})}
        self.entries: dict[tuple[int, str], list[Trigger]] = {}
        self.writes = 0

    async def load(self) -> None:
        return None

    async def write(self, items: list[tuple[int, str, list[Trigger]]]) -> None:
        self.writes += 1
        for partition, log_id, triggers in items:
            # XADD with an explicit id refuses one not above the stream's newest.
            newest = max((stream_id_order(i) for p, i in self.entries if p == partition), default=(0, 0))
            if stream_id_order(log_id) > newest:
                self.entries[(partition, log_id)] = triggers


def shard_with(log: FakeLog, inbox: Inbox) -> UserShard:
    return UserShard(0, Settings(partitions=2, shards=1), log, forwarding=inbox)  # type: ignore[arg-type]


async def append(shard: UserShard, batch_id: str, account: str, records: list) -> None:
    partition = shard.partition_map.partition_of(account, records[0].user)
    await shard.append([ShardBlob(partition, batch_id, record_list_encoder.encode(log_batch(account, records)))])


def forwarded(inbox: Inbox) -> list[tuple[str, str, str, dict]]:
    return [(t.account, t.user, t.event, t.props) for ts in inbox.entries.values() for t in ts]


async def test_only_the_events_journeys_react_to_are_forwarded() -> None:
    inbox = Inbox()
    shard = shard_with(FakeLog(), inbox)
    await append(shard, "b1", ACCOUNT, [EventRecord("identity:1", T0, "Added To Cart", {"CartId": "c1"}),
                                        EventRecord("identity:1", T0, "Product Viewed", {}),
                                        ProfileRecord("identity:1", T0, {"Tz": "UTC"}),
                                        EventRecord("identity:1", T0, "Charged", {"CartId": "c1"}, "m1")])
    await append(shard, "b2", OTHER, [EventRecord("identity:1", T0, "Charged", {"CartId": "c1"})])
    assert forwarded(inbox) == [(ACCOUNT, "identity:1", "Added To Cart", {"CartId": "c1"}),
                                (ACCOUNT, "identity:1", "Charged", {"CartId": "c1"})]
    assert inbox.writes == 1  # the other account has no journeys: no inbox write at all


async def test_retries_and_duplicate_message_ids_are_not_forwarded_twice() -> None:
    inbox = Inbox()
    shard = shard_with(FakeLog(), inbox)
    charge = EventRecord("identity:2", T0, "Charged", {"CartId": "c2"}, "m-2")
    await append(shard, "b1", ACCOUNT, [charge])
    await append(shard, "b1", ACCOUNT, [charge])  # the same batch retried
    await append(shard, "b2", ACCOUNT, [charge])  # the same record sent again
    assert forwarded(inbox) == [(ACCOUNT, "identity:2", "Charged", {"CartId": "c2"})]


async def test_a_restarted_shard_forwards_its_log_tail_again_under_the_same_ids() -> None:
    log, inbox = FakeLog(), Inbox()
    shard = shard_with(log, inbox)
    for i in range(3):
        await append(shard, f"b{i}", ACCOUNT, [EventRecord(f"identity:{i}", T0, "Added To Cart", {"CartId": i})])
    first = dict(inbox.entries)
    lost = max(first, key=lambda key: stream_id_order(key[1]))
    del inbox.entries[lost]  # the last inbox write was lost in the crash
    restarted = shard_with(log, inbox)
    await restarted.ready()
    assert inbox.entries == first  # written again; the others were refused as already there
