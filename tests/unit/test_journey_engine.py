"""The journey engine without Ray or Redis: journeys driven by events and a clock that
jumps, with profiles and behaviour read from a real shard core over a fake log."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest

from kairos.config import Settings
from kairos.journeys.engine import JourneyEngine, UserKey
from kairos.journeys.forwarding import TriggerForwarding
from kairos.journeys.model import Position, SavedJourney, SegmentSignalIn, Trigger
from kairos.models import EventRecord, ProfileRecord, ShardBlob, record_list_encoder
from kairos.shard import UserShard
from fakes import FakeLog
from tests.journey_examples import ABANDONED_CART
from tests.unit.test_shard_core import log_batch

pytestmark = pytest.mark.timeout(60)

ACCOUNT = "ACC-JRN-0001"
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_790_000_000_000  # 2026-09-21T14:13:20Z


ONBOARDING: dict[str, Any] = {
    "entry": {"event": "Signed Up"},
    "start": "welcome",
    "nodes": {
        "welcome": {"type": "send", "channel": "email", "message": {"subject": "Welcome", "text": "Welcome"}, "next": "day1"},
        "day1": {"type": "wait", "duration": "1d", "next": "launched"},
        "launched": {"type": "branch", "condition": {"did": "App Launched", "within": "2d"},
                     "yes": "ab", "no": "nudge"},
        "nudge": {"type": "send", "channel": "sms", "message": {"text": "Open the app"}, "next": "week"},
        "ab": {"type": "split", "variants": [{"name": "tips", "percent": 50, "next": "tips"},
                                             {"name": "quiet", "percent": 50, "next": "week"}]},
        "tips": {"type": "send", "channel": "push", "message": {"title": "3 tips"}, "next": "week"},
        "week": {"type": "wait", "duration": "6d", "next": "survey"},
        "survey": {"type": "send", "channel": "email", "message": {"subject": "How was week one?", "text": "How was week one?"}},
    },
}


class History:
    def __init__(self) -> None:
        self.rows: dict[UserKey, tuple[int, int]] = {}

    async def entries(self, keys: list[UserKey]) -> list[tuple[int, int] | None]:
        return [self.rows.get(k) for k in keys]


class ShardLookups:
    def __init__(self, shard: UserShard) -> None:
        self.shard = shard
        self.calls = 0

    async def matching(self, account: str, condition: Any, users: list[str], now_ms: int, tz: str) -> list[bool]:
        self.calls += 1
        return await self.shard.users_matching(account, condition, users, now_ms, tz)

    async def time_zones(self, account: str, users: list[str]) -> list[str | None]:
        self.calls += 1
        return await self.shard.time_zones(account, users)


class World:
    """An engine whose every step is "committed" into plain dicts, as the runner does."""

    def __init__(self, journeys: dict[str, Any], now: int = T0) -> None:
        self.now = now
        self.shard = UserShard(0, Settings(partitions=4, shards=1), FakeLog())
        self.lookups = ShardLookups(self.shard)
        self.history = History()
        self.engine = JourneyEngine(self.lookups, self.history)
        self.saved = {name: SavedJourney(name, 1, "active", {1: d}) for name, d in journeys.items()}
        self.engine.set_journeys(ACCOUNT, list(self.saved.values()))
        self.positions: dict[UserKey, Position] = {}
        self.sends: list[Any] = []
        self.stats: Counter[str] = Counter()
        self._batches = 0

    async def step(self, events: list[Trigger] = (), signals: list[SegmentSignalIn] = (),  # type: ignore[assignment]
                   scheduled: list[tuple[str, str, int, list[str]]] = ()) -> None:  # type: ignore[assignment]
        await self.engine.process(self.now, list(events), list(signals), list(scheduled))
        self.commit()

    def commit(self) -> None:
        changes = self.engine.take_changes()
        self.history.rows.update(changes.entries)
        for key, pos in changes.positions.items():
            if pos is None:
                self.positions.pop(key, None)
            else:
                self.positions[key] = copy.copy(pos)
        self.sends.extend(changes.sends)
        for (_, name), fields in changes.stats.items():
            for field, n in fields.items():
                self.stats[f"{name}|{field}"] += n

    async def event(self, user: str, name: str, **props: Any) -> None:
        await self.step(events=[Trigger(ACCOUNT, user, name, self.now, props)])

    async def advance(self, ms: int) -> None:
        self.now += ms
        await self.step()

    async def record(self, user: str, name: str, **props: Any) -> None:
        """An event stored on the shard (what branches read)."""
        await self._append([EventRecord(user, self.now, name, props)])

    async def profile(self, user: str, **props: Any) -> None:
        await self._append([ProfileRecord(user, self.now, props)])

    async def _append(self, records: list[Any]) -> None:
        self._batches += 1
        partition = self.shard.partition_map.partition_of(ACCOUNT, records[0].user)
        await self.shard.append([ShardBlob(partition, f"b{self._batches}",
                                           record_list_encoder.encode(log_batch(ACCOUNT, records)))])

    def sent(self, user: str) -> list[tuple[str, str]]:
        return [(s.channel, s.node) for s in self.sends if s.user == user]

    def waiting(self, name: str, node: str, version: int = 1) -> int:
        return self.stats[f"{name}|v{version}|node|{node}|waiting"]


async def test_abandoned_cart_pushes_after_an_hour_then_emails_a_coupon_after_a_day() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.event("u1", "Added To Cart", CartId="c1")
    assert world.sent("u1") == [] and world.waiting("cart", "wait_charge") == 1
    await world.advance(HOUR - 1)
    assert world.sent("u1") == []
    await world.advance(1)
    assert world.sent("u1") == [("push", "push")]
    await world.advance(DAY - 1)
    assert world.sent("u1") == [("push", "push")]
    await world.advance(1)
    assert world.sent("u1") == [("push", "push"), ("email", "email")]
    assert world.sends[-1].message == {"subject": "10% off", "text": "Use SAVE10 at checkout"}
    assert world.positions == {}
    assert world.stats["cart|v1|entered"] == 1 and world.stats["cart|v1|completed"] == 1
    assert world.stats["cart|v1|converted"] == 0 and world.waiting("cart", "wait_day") == 0


async def test_the_matching_charge_converts_and_nothing_is_sent() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.event("u1", "Added To Cart", CartId="c1")
    await world.advance(30 * MINUTE)
    await world.event("u1", "Charged", CartId="c1", Amount=20)
    await world.advance(2 * DAY)
    assert world.sends == [] and world.positions == {}
    assert world.stats["cart|v1|converted"] == 1 and world.waiting("cart", "wait_charge") == 0


async def test_a_charge_for_another_cart_does_not_stop_the_reminder() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.event("u1", "Added To Cart", CartId="c1")
    await world.event("u1", "Charged", CartId="c0")
    await world.advance(HOUR)
    assert world.sent("u1") == [("push", "push")]
    await world.event("u1", "Charged", CartId="c1")  # after the push: converts, no email
    await world.advance(2 * DAY)
    assert world.sent("u1") == [("push", "push")]
    assert world.stats["cart|v1|converted"] == 1


async def test_an_entry_and_its_charge_in_one_batch_convert() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.step(events=[Trigger(ACCOUNT, "u1", "Added To Cart", T0, {"CartId": "c9"}),
                             Trigger(ACCOUNT, "u1", "Charged", T0, {"CartId": "c9"})])
    await world.advance(2 * DAY)
    assert world.sends == [] and world.stats["cart|v1|converted"] == 1


async def test_send_ids_are_unique_per_entry_and_node() -> None:
    world = World({"cart": ABANDONED_CART})
    for cart in ("c1", "c2"):
        await world.event("u1", "Added To Cart", CartId=cart)
        await world.advance(HOUR)
        await world.advance(DAY)
    ids = [s.id for s in world.sends]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert world.history.rows[(ACCOUNT, "cart", "u1")][0] == 2


async def test_onboarding_drip_branches_on_what_the_user_did_and_splits_stably() -> None:
    world = World({"onboarding": ONBOARDING})
    users = [f"identity:{i}" for i in range(40)]
    for user in users:
        await world.event(user, "Signed Up")
    active = set(users[:20])
    for user in active:
        await world.record(user, "App Launched")
    assert all(world.sent(u) == [("email", "welcome")] for u in users)
    await world.advance(DAY)
    for user in users:
        if user in active:
            assert world.sent(user)[1:] in ([("push", "tips")], [])
        else:
            assert world.sent(user)[1:] == [("sms", "nudge")]
    tips = {s.user for s in world.sends if s.node == "tips"}
    assert 0 < len(tips) < 20 and all(s.variant == "tips" for s in world.sends if s.node == "tips")
    await world.advance(6 * DAY)
    assert all(world.sent(u)[-1] == ("email", "survey") for u in users)
    assert world.positions == {}
    assert world.stats["onboarding|v1|node|launched|reached"] == 40
    assert world.stats["onboarding|v1|node|tips|sent|tips"] == len(tips)
    # The same users land in the same variant on another run.
    again = World({"onboarding": ONBOARDING})
    for user in users:
        await again.event(user, "Signed Up")
        if user in active:
            await again.record(user, "App Launched")
    await again.advance(DAY)
    assert {s.user for s in again.sends if s.node == "tips"} == tips


async def test_wait_until_ten_in_each_users_time_zone() -> None:
    journey = {"entry": {"event": "Signed Up"}, "start": "ten", "tz": "America/New_York",
               "nodes": {"ten": {"type": "wait_until", "time": "10:00", "next": "hello"},
                         "hello": {"type": "send", "channel": "push", "message": {"title": "Good morning"}}}}
    world = World({"morning": journey})
    await world.profile("kolkata", Tz="Asia/Kolkata")
    await world.profile("nozone")
    await world.profile("badzone", Tz="Mars/Olympus")
    for user in ("kolkata", "nozone", "badzone"):
        await world.event(user, "Signed Up")
    due = {key[2]: pos.due_ms for key, pos in world.positions.items()}
    # T0 is 2026-09-21 14:13:20 UTC: 19:43 in Kolkata, 10:13 in New York (EDT), both past 10:00.
    assert due["kolkata"] == 1_790_051_400_000  # 2026-09-22T04:30Z = 10:00 IST
    assert due["nozone"] == due["badzone"] == 1_790_085_600_000  # 2026-09-22T14:00Z = 10:00 EDT
    assert world.stats["morning|v1|node|ten|reached"] == 3
    await world.advance(due["kolkata"] - T0 - 1)
    assert world.sends == []
    await world.advance(1)
    assert [s.user for s in world.sends] == ["kolkata"]


async def test_a_seven_day_wait_runs_on_a_jumping_clock_and_fires_once() -> None:
    journey = {"entry": {"event": "Trial Started"}, "start": "week",
               "nodes": {"week": {"type": "wait", "duration": "7d", "next": "ask"},
                         "ask": {"type": "send", "channel": "email", "message": {"subject": "Upgrade?", "text": "Upgrade?"}}}}
    world = World({"trial": journey})
    await world.step(events=[Trigger(ACCOUNT, f"u{i}", "Trial Started", T0, {}) for i in range(1000)])
    await world.advance(7 * DAY - 1)
    assert world.sends == []
    await world.advance(30 * DAY)
    assert len(world.sends) == 1000 and len({s.user for s in world.sends}) == 1000
    await world.advance(30 * DAY)
    assert len(world.sends) == 1000


async def test_reentry_once_always_and_every_n_days() -> None:
    def simple(reentry: Any) -> dict[str, Any]:
        return {"entry": {"event": "Visited"}, "start": "hi", "reentry": reentry,
                "nodes": {"hi": {"type": "send", "channel": "push", "message": {"title": "hi"}}}}

    world = World({"once": simple("once"), "always": simple("always"), "weekly": simple({"every": "7d"})})
    for day in range(15):
        await world.event("u1", "Visited")
        await world.advance(DAY)
    counts = Counter(s.journey for s in world.sends)
    assert counts == {"once": 1, "always": 15, "weekly": 3}


async def test_a_user_is_in_a_journey_once_at_a_time() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.event("u1", "Added To Cart", CartId="c1")
    await world.event("u1", "Added To Cart", CartId="c2")
    assert world.stats["cart|v1|entered"] == 1
    assert world.positions[(ACCOUNT, "cart", "u1")].key == "c1"


async def test_control_group_enters_gets_nothing_and_still_converts() -> None:
    journey = dict(ABANDONED_CART, control_percent=30)
    world = World({"cart": journey})
    users = [f"u{i}" for i in range(400)]
    await world.step(events=[Trigger(ACCOUNT, u, "Added To Cart", T0, {"CartId": u}) for u in users])
    control = {k[2] for k, p in world.positions.items() if p.control}
    assert 80 < len(control) < 160
    await world.step(events=[Trigger(ACCOUNT, u, "Charged", T0, {"CartId": u}) for u in users[:100]])
    await world.advance(2 * DAY)
    assert not {s.user for s in world.sends} & control
    assert {s.user for s in world.sends} == set(users[100:]) - control
    assert world.stats["cart|v1|entered"] + world.stats["cart|v1|control_entered"] == 400
    assert world.stats["cart|v1|control_entered"] == len(control)
    assert world.stats["cart|v1|converted"] + world.stats["cart|v1|control_converted"] == 100
    assert world.stats["cart|v1|control_converted"] == len(control & set(users[:100]))


async def past_the_last_message_with_a_goal_window() -> World:
    """u1 has had both abandoned-cart messages, with a 3-day conversion window after them."""
    world = World({"cart": dict(ABANDONED_CART, goal={"event": "Charged", "match": True, "within": "3d"})})
    await world.event("u1", "Added To Cart", CartId="c1")
    await world.advance(HOUR)
    await world.advance(DAY)
    return world


async def test_goal_window_counts_a_conversion_after_the_last_message() -> None:
    world = await past_the_last_message_with_a_goal_window()
    assert world.sent("u1") == [("push", "push"), ("email", "email")]
    await world.event("u1", "Charged", CartId="c1")
    assert world.stats["cart|v1|converted"] == 1 and world.positions == {}
    await world.event("u2", "Added To Cart", CartId="c2")
    await world.advance(HOUR)
    await world.advance(DAY)
    assert world.positions[(ACCOUNT, "cart", "u2")].node == "$goal"  # done, and may still convert
    await world.advance(2 * DAY)
    assert world.positions == {} and world.stats["cart|v1|completed"] == 2


async def test_exit_events_and_leaving_the_entry_segment_end_the_journey() -> None:
    journey = {"entry": {"segment": "VIP"}, "start": "wait", "exit": [{"event": "Unsubscribed"}, {"left_segment": True}],
               "nodes": {"wait": {"type": "wait", "duration": "1d", "next": "hi"},
                         "hi": {"type": "send", "channel": "email", "message": {"subject": "Hi VIP", "text": "Hi VIP"}}}}
    world = World({"vip": journey})
    await world.step(signals=[SegmentSignalIn(ACCOUNT, "VIP", u, True) for u in ("a", "b", "c")])
    await world.event("a", "Unsubscribed")
    await world.step(signals=[SegmentSignalIn(ACCOUNT, "VIP", "b", False),
                              SegmentSignalIn(ACCOUNT, "Other", "c", False)])
    await world.advance(DAY)
    assert [s.user for s in world.sends] == ["c"]
    assert world.stats["vip|v1|exited"] == 2 and world.stats["vip|v1|completed"] == 1


async def test_a_schedule_enters_the_members_it_is_given() -> None:
    journey = {"entry": {"schedule": {"segment": "All", "at": "2026-09-21T00:00:00Z"}}, "start": "hi",
               "nodes": {"hi": {"type": "send", "channel": "email", "message": {"subject": "news", "text": "news"}}}}
    world = World({"news": journey})
    run_at = 1_789_948_800_000
    await world.step(scheduled=[(ACCOUNT, "news", run_at, ["a", "b"])])
    assert sorted(s.user for s in world.sends) == ["a", "b"]
    assert world.engine.scheduled_journeys()[0][1] == "news"
    # The run repeated (a crash before its end was noted) enters no one twice...
    await world.step(scheduled=[(ACCOUNT, "news", run_at, ["a", "b", "c"])])
    assert sorted(s.user for s in world.sends) == ["a", "b", "c"]
    # ...and the next run is a new entry, as `reentry` allows ("once" by default: none).
    await world.advance(DAY)
    await world.step(scheduled=[(ACCOUNT, "news", run_at + DAY, ["a"])])
    assert len(world.sends) == 3


async def test_pause_holds_users_where_they_are_and_resume_goes_on() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.event("u1", "Added To Cart", CartId="c1")
    world.saved["cart"].status = "paused"
    world.engine.set_journeys(ACCOUNT, list(world.saved.values()))
    await world.event("u2", "Added To Cart", CartId="c2")  # no entries while paused
    await world.advance(3 * DAY)
    assert world.sends == [] and list(world.positions) == [(ACCOUNT, "cart", "u1")]
    world.saved["cart"].status = "active"
    world.engine.set_journeys(ACCOUNT, list(world.saved.values()))
    await world.step()
    # The hour's wait was over: the push goes now, and the day's wait starts now.
    assert world.sent("u1") == [("push", "push")]
    await world.advance(DAY)
    assert world.sent("u1") == [("push", "push"), ("email", "email")]


async def test_a_new_version_leaves_users_in_flight_on_theirs_until_moved() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.event("u1", "Added To Cart", CartId="c1")
    await world.event("u2", "Added To Cart", CartId="c2")
    v2 = copy.deepcopy(ABANDONED_CART)
    v2["nodes"]["push"]["message"] = {"title": "v2 push"}
    world.saved["cart"] = SavedJourney("cart", 2, "active", {1: ABANDONED_CART, 2: v2})
    world.engine.set_journeys(ACCOUNT, list(world.saved.values()))
    await world.event("u3", "Added To Cart", CartId="c3")
    assert world.positions[(ACCOUNT, "cart", "u3")].version == 2
    assert world.engine.move(ACCOUNT, "cart", 1, {}, world.now) == 2
    world.commit()
    await world.advance(HOUR)
    assert {s.user: (s.version, s.message["title"]) for s in world.sends} == {
        "u1": (2, "v2 push"), "u2": (2, "v2 push"), "u3": (2, "v2 push")}
    assert world.waiting("cart", "wait_day", 2) == 3 and world.waiting("cart", "wait_charge", 1) == 0


async def test_a_restarted_engine_fires_waits_that_came_due_while_down_once() -> None:
    world = World({"cart": ABANDONED_CART})
    for i in range(10):
        await world.event(f"u{i}", "Added To Cart", CartId="c")
    # A new process: the same journeys, the positions as committed, and a day gone by.
    restarted = JourneyEngine(world.lookups, world.history)
    restarted.set_journeys(ACCOUNT, list(world.saved.values()))
    restarted.load([(a, n, u, p) for (a, n, u), p in world.positions.items()])
    world.engine = restarted
    await world.advance(DAY)
    assert sorted(s.user for s in world.sends) == sorted(f"u{i}" for i in range(10))
    await world.advance(HOUR)
    assert len(world.sends) == 10
    await world.advance(DAY)
    assert len(world.sends) == 20


async def test_deleting_a_journey_drops_its_users() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.event("u1", "Added To Cart", CartId="c1")
    world.engine.set_journeys(ACCOUNT, [])
    world.commit()
    await world.advance(2 * DAY)
    assert world.positions == {} and world.sends == [] and world.engine.signal_segments() == []


def test_shards_forward_every_event_any_version_reacts_to() -> None:
    v2 = copy.deepcopy(ABANDONED_CART)
    v2["exit"] = [{"event": "Unsubscribed"}]
    saved = [SavedJourney("cart", 2, "active", {1: ABANDONED_CART, 2: v2}), SavedJourney("drip", 1, "paused", {1: ONBOARDING})]
    forwarding = TriggerForwarding(None, None)  # type: ignore[arg-type]
    assert forwarding.events_for(ACCOUNT, saved) == {"Added To Cart", "Charged", "Unsubscribed", "Signed Up"}


async def test_a_goal_and_a_new_entry_in_one_batch_number_the_entries_apart() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.event("u1", "Added To Cart", CartId="c1")
    await world.advance(HOUR)
    await world.step(events=[Trigger(ACCOUNT, "u1", "Charged", T0, {"CartId": "c1"}),
                             Trigger(ACCOUNT, "u1", "Added To Cart", T0, {"CartId": "c2"})])
    await world.advance(HOUR)
    assert [s.id.rsplit("/", 2)[1:] for s in world.sends] == [["1", "push"], ["2", "push"]]
    assert world.history.rows[(ACCOUNT, "cart", "u1")][0] == 2


async def test_match_needs_the_property_on_both_events() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.event("u1", "Added To Cart")  # no CartId: nothing can match it
    await world.event("u1", "Charged")
    await world.advance(HOUR)
    assert world.sent("u1") == [("push", "push")] and world.stats["cart|v1|converted"] == 0


async def test_a_user_queued_twice_moves_once() -> None:
    world = World({"onboarding": ONBOARDING})
    await world.event("u1", "Signed Up")
    restarted = JourneyEngine(world.lookups, world.history)
    restarted.set_journeys(ACCOUNT, list(world.saved.values()))
    position = [(a, n, u, p) for (a, n, u), p in world.positions.items()]
    restarted.load(position)
    restarted.load(position)  # a load retried after a failure part-way
    world.engine = restarted
    await world.advance(DAY)
    assert world.sent("u1") == [("email", "welcome"), ("sms", "nudge")]
    assert world.waiting("onboarding", "week") == 1 and min(world.stats.values()) >= 0


async def test_a_journey_deleted_and_saved_again_starts_empty() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.event("u1", "Added To Cart", CartId="c1")
    world.engine.set_journeys(ACCOUNT, [SavedJourney("cart", 2, "active", {2: ABANDONED_CART}, created_ms=5)])
    world.commit()
    assert world.positions == {}
    await world.advance(2 * DAY)
    assert world.sends == []


async def test_exit_nodes_count_who_reached_them() -> None:
    journey = {"entry": {"event": "Visited"}, "start": "gold",
               "nodes": {"gold": {"type": "branch", "condition": {"profile": "Plan", "op": "eq", "value": "gold"},
                                  "yes": "done_gold", "no": "done_other"},
                         "done_gold": {"type": "exit"}, "done_other": {"type": "exit"}}}
    world = World({"sort": journey})
    await world.profile("identity:1", Plan="gold")
    for user in ("identity:1", "identity:2", "identity:3"):
        await world.event(user, "Visited")
    assert world.stats["sort|v1|node|done_gold|reached"] == 1
    assert world.stats["sort|v1|node|done_other|reached"] == 2


async def test_users_in_the_goal_window_are_counted_and_cannot_enter_again_yet() -> None:
    world = await past_the_last_message_with_a_goal_window()
    assert world.stats["cart|v1|goal_window"] == 1 and world.waiting("cart", "wait_day") == 0
    await world.event("u1", "Added To Cart", CartId="c2")
    assert world.stats["cart|v1|entered"] == 1
    await world.advance(2 * DAY)
    assert world.stats["cart|v1|goal_window"] == 0
    await world.event("u1", "Added To Cart", CartId="c3")
    assert world.stats["cart|v1|entered"] == 2


async def test_an_entry_event_from_long_ago_enters_no_one() -> None:
    world = World({"cart": ABANDONED_CART})
    await world.step(events=[Trigger(ACCOUNT, "u1", "Added To Cart", T0 - 2 * DAY, {"CartId": "old"}),
                             Trigger(ACCOUNT, "u2", "Added To Cart", T0 - HOUR, {"CartId": "recent"})])
    assert [key[2] for key in world.positions] == ["u2"]
    # Taken an hour after it happened, read three days later (the journey actor was down): it enters.
    late = Trigger(ACCOUNT, "u3", "Added To Cart", T0, {"CartId": "late"}, ingested_ms=T0 + HOUR)
    world.now = T0 + 3 * DAY
    await world.step(events=[late])
    assert sorted(key[2] for key in world.positions) == ["u2", "u3"]


async def test_waits_replaced_long_before_their_end_are_swept_from_the_heap() -> None:
    journey = {"entry": {"event": "Visited"}, "start": "long", "reentry": "always",
               "nodes": {"long": {"type": "wait_for_event", "event": "Bought", "timeout": "300d"}}}
    world = World({"long": journey})
    users = [f"u{i}" for i in range(60_000)]
    for _ in range(3):  # each round: everyone enters (a 300-day wait), then leaves at once
        await world.step(events=[Trigger(ACCOUNT, u, "Visited", world.now, {}) for u in users])
        await world.step(events=[Trigger(ACCOUNT, u, "Bought", world.now, {}) for u in users])
    await world.step(events=[Trigger(ACCOUNT, u, "Visited", world.now, {}) for u in users[:10]])
    assert len(world.engine._timers) < 100_000  # 180,010 pushed; the stale ones swept
    assert world.waiting("long", "long") == 10


FILTERED: dict[str, Any] = {
    "entry": {"event": "Added To Cart", "where": [{"property": "Amount", "op": "gte", "value": 50},
                                                  {"property": "Category", "op": "contains", "value": "shoe"}]},
    "start": "wait_charge",
    "nodes": {
        "wait_charge": {"type": "wait_for_event", "event": "Charged",
                        "where": [{"property": "Coupon", "op": "ne", "value": "STAFF"}],
                        "timeout": "1h", "on_event": "thanks", "on_timeout": "push"},
        "thanks": {"type": "send", "channel": "email", "message": {"subject": "Thanks", "text": "Thanks"}},
        "push": {"type": "send", "channel": "push", "message": {"title": "Still thinking?"}},
    },
    "goal": {"event": "Reviewed", "where": [{"property": "Stars", "op": "gte", "value": 4}]},
}


async def test_where_filters_decide_entry_waits_and_goals_as_segments_do() -> None:
    world = World({"shoes": FILTERED})
    await world.event("cheap", "Added To Cart", Amount=20, Category="Shoes")
    await world.event("other", "Added To Cart", Amount=80, Category="Hats")
    await world.event("text", "Added To Cart", Amount="80", Category="Shoes")  # types do not mix
    await world.event("in", "Added To Cart", Amount=80, Category="Running SHOES")  # contains ignores case
    assert world.stats["shoes|v1|entered"] == 1 and world.waiting("shoes", "wait_charge") == 1

    # `ne` needs the property: a Charged without a Coupon is not the awaited one.
    await world.event("in", "Charged", Amount=80)
    await world.event("in", "Charged", Amount=80, Coupon="STAFF")
    assert world.sent("in") == [] and world.waiting("shoes", "wait_charge") == 1
    await world.event("in", "Charged", Amount=80, Coupon="SPRING")
    assert world.sent("in") == [("email", "thanks")]

    await world.event("late", "Added To Cart", Amount=99, Category="shoe")
    await world.event("late", "Reviewed", Stars=3)
    assert world.stats["shoes|v1|converted"] == 0 and world.waiting("shoes", "wait_charge") == 1
    await world.event("late", "Reviewed", Stars=5)
    assert world.stats["shoes|v1|converted"] == 1
    await world.advance(HOUR)
    assert world.sent("late") == []  # the goal ended the journey
