"""The campaign scheduler against real Redis, on a clock the test moves: every kind of
schedule, triggers, stable A/B splits, a stop part-way and a restart part-way through a
run. The audience comes from a stand-in for the shard (what it would answer); Ray is
not needed. A Redis database of its own keeps the running deployment's routers away."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import msgspec
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from kairos import keys
from kairos.campaigns import planning, scheduler as scheduler_module
from kairos.campaigns.catalog import CampaignCatalog
from kairos.campaigns.scheduler import CampaignScheduler
from kairos.campaigns.store import CampaignStore
from kairos.journeys.model import SendRequest, Trigger, trigger_list_encoder
from kairos.journeys.outbox import OutboxReader
from kairos.models import Record
from kairos.partitions import PartitionMap
from kairos.redis_server import EmbeddedRedis
from kairos.routing.delivery_events import HELD_OUT
from kairos.segments.catalog import SegmentCatalog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ACCOUNT = "ACC-CAMPAIGNS"
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
PARTITIONS = PartitionMap(4, 1)
INBOX = {"channel": "in_app", "message": {"title": "Hi"}}


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(timezone.utc).timestamp() * 1000)


class SteppedClock:
    """The injectable clock: time moves only when the test says."""

    manual = True

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    async def now_ms(self) -> int:
        return self.now


class Shard:
    """What the shard answers: every user is in every audience; zones from `zones`."""

    def __init__(self, users: list[str], zones: dict[str, str] | None = None) -> None:
        self.users = users
        self.zones = zones or {}

    async def segment_users(self, account: str, definition: Any, now_ms: int, tz: str) -> list[str]:
        return list(self.users)

    async def time_zones(self, account: str, users: list[str]) -> list[str | None]:
        return [self.zones.get(u) for u in users]

    async def identifiers(self, account: str, users: list[str]) -> list[str | None]:
        return [f"identity:{u}" for u in users]


class World:
    def __init__(self, client: aioredis.Redis, clock: SteppedClock, shard: Shard) -> None:
        self.client, self.clock, self.shard = client, clock, shard
        self.catalog = CampaignCatalog(client, clock)
        self.outbox = OutboxReader(client, PARTITIONS.partitions_of(0))
        self.sends: list[SendRequest] = []
        self.scheduler = self.new_scheduler()

    def new_scheduler(self) -> CampaignScheduler:
        """A scheduler as a restarted actor makes it: from what Redis holds."""
        store = CampaignStore(self.client, PARTITIONS, PARTITIONS.partitions_of(0))
        return CampaignScheduler(store, self.catalog, SegmentCatalog(self.client), self.shard, self.clock, poll_ms=1)

    async def create(self, definition: dict[str, Any]) -> int:
        saved, _ = await self.catalog.create(ACCOUNT, "campaign", {"audience": {"where": {"everyone": True}},
                                                                   **definition})
        await self.scheduler.refresh(ACCOUNT)
        return saved.id

    async def run(self, steps: int = 3) -> list[SendRequest]:
        """Steps the scheduler; returns the requests it queued meanwhile."""
        await self.scheduler.load()  # as the actor's start does (once)
        for _ in range(steps):
            await self.scheduler.step()
        found = await self.outbox.read(count=100_000)
        self.sends.extend(found)
        return found

    async def stats(self, campaign_id: int) -> dict[str, int]:
        return await self.catalog.stats(ACCOUNT, campaign_id)


@pytest_asyncio.fixture
async def client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    # The URL names database 0 (the deployment's): a `db` argument would not override it.
    client = aioredis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3")
    assert client.connection_pool.connection_kwargs["db"] == 3
    await client.flushdb()
    yield client
    await client.aclose()


def world(client: aioredis.Redis, now: str, users: list[str], zones: dict[str, str] | None = None) -> World:
    return World(client, SteppedClock(at(now)), Shard(users, zones))


async def test_now_sends_to_everyone_at_once_with_stable_ids(client: aioredis.Redis) -> None:
    w = world(client, "2026-11-24T10:00:00+00:00", [f"u{i}" for i in range(50)])
    campaign_id = await w.create({"schedule": "now", "message": INBOX})
    sent = await w.run()
    assert sorted(s.user for s in sent) == sorted(w.shard.users)
    assert {s.id for s in sent} == {planning.send_id(campaign_id, w.clock.now, u) for u in w.shard.users}
    assert all(s.source_kind == "campaign" and s.journey == str(campaign_id) and s.at_ms == w.clock.now for s in sent)
    assert await w.run() == []  # the run is done: nothing more, ever
    stats = await w.stats(campaign_id)
    assert stats["audience"] == 50 and stats["queued|A"] == 50 and stats[f"done|{w.clock.now}"] == 1


async def test_at_a_time_waits_for_it(client: aioredis.Redis) -> None:
    w = world(client, "2026-11-24T10:00:00+00:00", ["a", "b"])
    await w.create({"schedule": {"at": "2026-11-24T12:30:00Z"}, "message": INBOX})
    assert await w.run() == []
    w.clock.now = at("2026-11-24T12:29:59+00:00")
    assert await w.run() == []
    w.clock.now = at("2026-11-24T12:30:00+00:00")
    assert sorted(s.user for s in await w.run()) == ["a", "b"]


@pytest.mark.parametrize("if_passed", ["next_day", "drop"])
async def test_local_time_reaches_each_user_at_their_own_nine(client: aioredis.Redis, if_passed: str) -> None:
    zones = {"delhi": "Asia/Kolkata", "london": "Europe/London", "york": "America/New_York", "nowhere": "Mars/Base"}
    # Saved at 06:00 UTC: 09:00 has passed in Delhi (03:30 UTC), not in London or New York.
    w = world(client, "2026-11-24T06:00:00+00:00", list(zones), zones)
    campaign_id = await w.create({"schedule": {"local_time": "09:00", "date": "2026-11-24", "if_passed": if_passed},
                                  "message": INBOX, "tz": "Europe/Paris"})
    assert await w.run() == []
    w.clock.now = at("2026-11-24T08:00:00+00:00")  # 09:00 in Paris: the campaign's zone, for "Mars/Base"
    assert [s.user for s in await w.run()] == ["nowhere"]
    w.clock.now = at("2026-11-24T09:00:00+00:00")
    assert [(s.user, s.at_ms) for s in await w.run()] == [("london", w.clock.now)]
    w.clock.now = at("2026-11-24T14:00:00+00:00")
    assert [s.user for s in await w.run()] == ["york"]
    w.clock.now = at("2026-11-25T03:30:00+00:00")  # Delhi's next 09:00
    late = [s.user for s in await w.run()]
    stats = await w.stats(campaign_id)
    if if_passed == "next_day":
        assert late == ["delhi"] and "missed_slot" not in stats
    else:
        assert late == [] and stats["missed_slot"] == 1
    assert stats["audience"] == 4


async def test_recurring_daily_and_weekly_runs_send_again_under_new_ids(client: aioredis.Redis) -> None:
    w = world(client, "2026-11-23T07:00:00+00:00", ["a", "b"])  # a Monday
    daily = await w.create({"schedule": {"every": "day", "at": "09:00"}, "message": INBOX, "tz": "Europe/Paris"})
    weekly = await w.create({"schedule": {"cron": "30 9 * * 3"}, "message": INBOX})  # Wednesdays 09:30 UTC
    seen: list[tuple[str, str]] = []
    for hour in range(0, 72, 1):  # three days, an hour at a time
        w.clock.now = at("2026-11-23T07:00:00+00:00") + hour * HOUR
        seen += [(s.journey, s.id) for s in await w.run(1)]
    runs = Counter(source for source, _ in seen)
    assert runs == {str(daily): 6, str(weekly): 2}  # 3 days x 2 users; 1 Wednesday x 2 users
    assert len({send_id for _, send_id in seen}) == len(seen)
    assert (await w.stats(daily))["runs"] == 3


async def test_a_scheduler_down_over_several_runs_sends_the_latest_once(client: aioredis.Redis) -> None:
    w = world(client, "2026-11-23T00:00:00+00:00", ["a"])
    await w.create({"schedule": {"every": "day", "at": "09:00"}, "message": INBOX})
    w.clock.now = at("2026-11-26T10:00:00+00:00")  # three runs missed
    sent = await w.run()
    assert [s.at_ms for s in sent] == [at("2026-11-26T09:00:00+00:00")]


async def test_triggered_campaigns_answer_events_after_their_delay(client: aioredis.Redis) -> None:
    w = world(client, "2026-11-24T10:00:00+00:00", [])
    await w.create({"schedule": {"trigger": {"event": "Added To Cart", "where": [
        {"property": "Value", "op": "gte", "value": 50}]}, "delay": "30m", "per_user": "once"},
        "message": {"channel": "in_app", "message": {"title": "Still want {{ event.Item }}?"}}, "audience": None})
    partition = PARTITIONS.partition_of(ACCOUNT, "shopper")
    base = w.clock.now

    async def trigger(offset_ms: int, **props: Any) -> None:
        ts = base + offset_ms
        triggers = [Trigger(ACCOUNT, "shopper", "Added To Cart", ts, props)]
        await client.xadd(keys.campaign_inbox(partition), {"t": trigger_list_encoder.encode(triggers)},
                          id=f"{ts}-0")

    await trigger(1000, Value=80, Item="boots")
    await trigger(2000, Value=10, Item="socks")  # below the filter
    await trigger(3000, Value=90, Item="hat")  # the user had one already: `once`
    w.clock.now = base + 5000
    sent = await w.run()
    assert [(s.user, s.at_ms, s.event) for s in sent] == [("shopper", w.clock.now + 30 * MINUTE, {"Item": "boots"})]
    restarted = w.new_scheduler()  # the inbox cursor and the `once` set are in Redis
    w.scheduler = restarted
    await trigger(4000, Value=99, Item="scarf")
    assert await w.run() == []


async def test_a_stopped_campaign_queues_no_one_else(client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "CHUNK", 10)
    w = world(client, "2026-11-24T10:00:00+00:00", [f"u{i:02}" for i in range(40)])
    campaign_id = await w.create({"schedule": "now", "message": INBOX})
    assert len(await w.run(1)) == 10
    await w.catalog.stop(ACCOUNT, campaign_id)
    await w.scheduler.refresh(ACCOUNT)
    assert await w.run() == []
    assert await client.sismember(keys.campaigns_stopped(ACCOUNT), str(campaign_id))


async def test_a_restart_mid_run_queues_everyone_once(client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "CHUNK", 7)
    users = [f"u{i:02}" for i in range(30)]
    w = world(client, "2026-11-24T10:00:00+00:00", users)
    campaign_id = await w.create({"schedule": "now", "message": INBOX, "control_percent": 20})
    await w.run(2)
    assert len(w.sends) < 30 - 7
    w.scheduler = w.new_scheduler()  # the actor died after its second commit
    w.shard.users = users + ["newcomer"]  # the audience changed meanwhile
    await w.run(10)
    stats = await w.stats(campaign_id)
    queued = [s.user for s in w.sends]
    held_out = await held_out_users(client)
    assert len(queued) == len(set(queued)) == stats["queued|A"]
    assert len(held_out) == len(set(held_out)) == stats["control"] > 0
    # Everyone once, sent or held out; the newcomer sorts before where the run had got
    # to, so waits for a next run.
    assert sorted(queued + held_out) == users
    assert stats["audience"] == 30  # counted when the run started, not again


async def held_out_users(client: aioredis.Redis) -> list[str]:
    """The users given a `Notification Held Out` event (the control group)."""
    decoder = msgspec.msgpack.Decoder(list[Record])
    users = []
    for partition in PARTITIONS.partitions_of(0):
        for _, fields in await client.xrange(keys.delivery_events(partition)):
            users += [r.user.removeprefix("identity:") for r in decoder.decode(fields[b"r"])
                      if getattr(r, "name", "") == HELD_OUT]
    return users
