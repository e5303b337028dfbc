"""Journeys on the real runtime: events uploaded through the gateway, forwarded by the
shards, moved along by journey actors on a manual clock, sends read from the outbox as
the channel router reads them. Includes a journey actor killed mid-wait and mid-step."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import time as clock_time
from typing import Any, Awaitable, Callable

import pytest
import ray
import redis.asyncio as aioredis

from kairos import keys
from kairos.identity_graph import IdentityGraph
from kairos.journeys.catalog import JourneyCatalog
from kairos.journeys.clock import ManualClock
from kairos.journeys.forwarding import TriggerForwarding
from kairos.journeys.engine import next_local_time
from kairos.journeys.model import SendRequest, Trigger, position_decoder, trigger_list_decoder
from kairos.journeys.outbox import OutboxReader
from kairos.journeys.state_store import field
from kairos.partitions import PartitionMap
from tests.integration.conftest import Api, Kairos, event
from tests.journey_examples import ABANDONED_CART

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HOUR, DAY = 3_600_000, 86_400_000
ALL_IDENTITIES = [f"shopper-{i}" for i in range(6)] + [f"sleeper-{i}" for i in range(20)]



class Journeys:
    """One account's journeys on the running deployment, and its sends as the router sees them."""

    def __init__(self, kairos: Kairos, api: Api, client: aioredis.Redis) -> None:
        self.kairos, self.api, self.client = kairos, api, client
        self.account = api.creds.account_id
        self.catalog = JourneyCatalog(client)
        self.clock = ManualClock(client)
        self.outbox = OutboxReader(client, list(range(kairos.settings.partitions)))
        self.sends: list[SendRequest] = []

    async def save(self, name: str, definition: Any) -> None:
        await self.catalog.save(self.account, name, definition)
        await self.refresh()

    async def refresh(self) -> None:
        await asyncio.gather(*(h.refresh_triggers.remote(self.account) for h in self.kairos.deployment.shards),
                             *(h.refresh.remote(self.account) for h in self.kairos.deployment.journeys))

    async def collect(self, until: Callable[[list[SendRequest]], bool], timeout_s: float = 20.0) -> list[SendRequest]:
        deadline = time.monotonic() + timeout_s
        while not until(self.sends):
            assert time.monotonic() < deadline, f"sends so far: {[(s.user, s.node) for s in self.sends]}"
            found = await self.outbox.read(block_ms=200)
            self.sends.extend(s for s in found if s.account == self.account)
        return self.sends

    async def settle(self, seconds: float = 1.0) -> None:
        """Read whatever else arrives for a while: what must not be sent has had its chance."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            found = await self.outbox.read(block_ms=100)
            self.sends.extend(s for s in found if s.account == self.account)

    async def stats(self, name: str) -> dict[str, int]:
        return await self.catalog.stats(self.account, name)

    async def upload(self, records: list[dict[str, Any]]) -> None:
        """Upload events stamped with the journeys' (manual) clock: an entry event more
        than a day old would enter no one."""
        now_s = await self.clock.now_ms() // 1000
        status, body = await self.api.upload([{**r, "ts": now_s} for r in records])
        assert status == 200 and body["processed"] == len(records), body


@pytest.fixture
async def journeys(kairos: Kairos, make_api: Callable[[], Awaitable[Api]]) -> Any:
    client = aioredis.Redis.from_url(kairos.settings.redis_url)
    world = Journeys(kairos, await make_api(), client)
    # Start reading the outbox from now: earlier tests' sends are not this test's.
    for stream in world.outbox.after:
        newest = await client.xrevrange(stream, count=1)
        world.outbox.after[stream] = newest[0][0].decode() if newest else "0-0"
    yield world
    await client.aclose()


async def serving_again(deployment: Any) -> None:
    """Restart the journey loops of actors Ray brought back (`kairos up` does it every 2 s)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await asyncio.to_thread(deployment.ensure_serving)
            return
        except ray.exceptions.RayActorError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)


async def until_stats(journeys: Journeys, name: str, expected: dict[str, int], timeout_s: float = 30) -> None:
    """Waits until the journey's counters show `expected`: its actors have taken the
    uploaded events up (instead of sleeping and hoping they have)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await journeys.stats(name)
        if all(stats.get(k, 0) == v for k, v in expected.items()):
            return
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.1)


def by_user(sends: list[SendRequest]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for s in sends:
        found.setdefault(s.user, []).append(s.node)
    return found


async def identities(journeys: Journeys, sends: list[SendRequest]) -> list[str]:
    """The identity each send went to (sends name canonical users)."""
    users = sorted({s.user for s in sends})
    found = await IdentityGraph(journeys.client).lookup(journeys.account, [f"identity:{u}" for u in ALL_IDENTITIES])
    identity_of = {user: ident for ident, user in zip(ALL_IDENTITIES, found) if user is not None}
    assert set(users) <= identity_of.keys()
    return sorted(identity_of[s.user] for s in sends)


async def test_abandoned_cart_over_the_gateway(journeys: Journeys) -> None:
    await journeys.save("cart", ABANDONED_CART)
    carts = {f"shopper-{i}": f"cart-{i}" for i in range(6)}
    await journeys.upload([event(u, "Added To Cart", CartId=c) for u, c in carts.items()])
    # Two pay for their own cart within the hour; one pays for a different cart.
    await journeys.upload([event("shopper-0", "Charged", CartId="cart-0", Amount=30),
                               event("shopper-1", "Charged", CartId="cart-1", Amount=12),
                               event("shopper-2", "Charged", CartId="another", Amount=5)])
    await until_stats(journeys, "cart", {"v1|converted": 2, "v1|node|wait_charge|waiting": 4})
    await journeys.clock.advance(HOUR)
    sends = await journeys.collect(lambda s: len(s) >= 4)
    assert {s.node for s in sends} == {"push"} and len(sends) == 4
    # One more pays after the push: no coupon for them.
    await journeys.upload([event("shopper-3", "Charged", CartId="cart-3", Amount=8)])
    await until_stats(journeys, "cart", {"v1|converted": 3})
    await journeys.clock.advance(DAY)
    sends = await journeys.collect(lambda s: len(s) >= 7)
    await journeys.settle()
    nodes = sorted(map(tuple, by_user(journeys.sends).values()))
    assert nodes == [("push",), ("push", "email"), ("push", "email"), ("push", "email")]
    pushed = await identities(journeys, [s for s in journeys.sends if s.node == "push"])
    emailed = await identities(journeys, [s for s in journeys.sends if s.node == "email"])
    assert pushed == ["shopper-2", "shopper-3", "shopper-4", "shopper-5"]
    assert emailed == ["shopper-2", "shopper-4", "shopper-5"]
    email = next(s for s in journeys.sends if s.node == "email")
    assert email.message == {"subject": "10% off", "text": "Use SAVE10 at checkout"} and email.channel == "email"
    stats = await journeys.stats("cart")
    assert stats["v1|entered"] == 6 and stats["v1|converted"] == 3 and stats["v1|completed"] == 3
    assert stats["v1|node|wait_charge|waiting"] == stats["v1|node|wait_day|waiting"] == 0
    assert len({s.id for s in journeys.sends}) == len(journeys.sends)


async def test_a_wait_survives_a_journey_actor_restart_and_fires_once(journeys: Journeys) -> None:
    await journeys.save("cart", ABANDONED_CART)
    users = [f"sleeper-{i}" for i in range(20)]
    await journeys.upload([event(u, "Added To Cart", CartId=u) for u in users])
    await until_stats(journeys, "cart", {"v1|node|wait_charge|waiting": 20})
    deployment = journeys.kairos.deployment
    pids = await asyncio.gather(*(j.pid.remote() for j in deployment.journeys))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    # The hour passes while no journey actor runs.
    await journeys.clock.advance(HOUR)
    await serving_again(deployment)
    await journeys.collect(lambda s: len(s) >= 20, timeout_s=60)
    await journeys.settle(2.0)
    assert await identities(journeys, journeys.sends) == sorted(users)
    assert {s.node for s in journeys.sends} == {"push"}
    stats = await journeys.stats("cart")
    assert stats["v1|node|wait_day|waiting"] == 20 and stats["v1|node|wait_charge|waiting"] == 0


async def test_sends_are_exactly_once_when_a_journey_actor_dies_mid_step(journeys: Journeys) -> None:
    journey = {"entry": {"event": "Trial Started"}, "start": "week", "reentry": "once",
               "nodes": {"week": {"type": "wait", "duration": "7d", "next": "ask"},
                         "ask": {"type": "send", "channel": "email", "message": {"subject": "Upgrade?", "text": "Upgrade?"}}}}
    await journeys.save("trial", journey)
    users = [f"trial-{i}" for i in range(6000)]
    for start in range(0, len(users), 1000):
        await journeys.upload([event(u, "Trial Started") for u in users[start:start + 1000]])
    deadline = time.monotonic() + 30
    while (await journeys.stats("trial")).get("v1|node|week|waiting", 0) < len(users):
        assert time.monotonic() < deadline, await journeys.stats("trial")
        await asyncio.sleep(0.2)
    deployment = journeys.kairos.deployment
    pids = await asyncio.gather(*(j.pid.remote() for j in deployment.journeys))
    await journeys.clock.advance(7 * DAY)
    # Kill both journey actors as soon as the first of them commits its due waits: the
    # other is then most likely between working them out and committing them.
    await journeys.collect(lambda s: len(s) > 0)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    await serving_again(deployment)
    await journeys.collect(lambda s: len(s) >= len(users), timeout_s=90)
    await journeys.settle(2.0)
    assert len(journeys.sends) == len(users)
    assert len({s.user for s in journeys.sends}) == len(users)
    stats = await journeys.stats("trial")
    assert stats["v1|node|ask|sent|-"] == len(users) and stats["v1|completed"] == len(users)
    assert stats["v1|node|week|waiting"] == 0


async def test_the_inbox_keeps_one_entry_per_log_batch_when_a_replay_writes_it_again(kairos: Kairos) -> None:
    client = aioredis.Redis.from_url(kairos.settings.redis_url)
    forwarding = TriggerForwarding(JourneyCatalog(client), client)
    forwarding.journey_interest = {"ACC-INBOX": frozenset({"Charged"})}
    # A partition the deployment does not have: its stream is this test's alone.
    partition = 10_000 + kairos.settings.partitions
    stream = keys.journey_inbox(partition)
    await client.delete(stream)
    base_ms = 1_790_000_000_000
    items = [(partition, f"{base_ms}-{i}", [Trigger("ACC-INBOX", f"u{i}", "Charged", 0, {"i": i})]) for i in range(3)]
    await forwarding.write(items)
    await forwarding.write(items[1:])  # a replay after a crash: already there
    stored = await client.xrange(stream, min=f"{base_ms}-0", max=f"{base_ms}-9")
    assert [(i.decode(), trigger_list_decoder.decode(f[b"t"])[0].user) for i, f in stored] == [
        (f"{base_ms}-0", "u0"), (f"{base_ms}-1", "u1"), (f"{base_ms}-2", "u2")]
    await client.delete(stream)
    await client.aclose()


async def test_shards_forward_each_event_to_the_inboxes_that_want_it(kairos: Kairos) -> None:
    client = aioredis.Redis.from_url(kairos.settings.redis_url)
    forwarding = TriggerForwarding(JourneyCatalog(client), client)
    forwarding.journey_interest = {"ACC-FWD": frozenset({"Charged"})}
    forwarding.campaign_interest = {"ACC-FWD": frozenset({"Charged", "Signed Up"})}
    partition = 20_000 + kairos.settings.partitions  # this test's alone
    inboxes = [keys.journey_inbox(partition), keys.campaign_inbox(partition)]
    await client.delete(*inboxes)
    triggers = [Trigger("ACC-FWD", "u", name, 0, {}) for name in ("Charged", "Signed Up", "App Launched")]
    await forwarding.write([(partition, "1790000000000-0", triggers)])
    found = []
    for stream in inboxes:
        found.append([t.event for _, f in await client.xrange(stream) for t in trigger_list_decoder.decode(f[b"t"])])
    assert found == [["Charged"], ["Charged", "Signed Up"]]
    await client.delete(*inboxes)
    await client.aclose()


DRIP: dict[str, Any] = {
    "entry": {"event": "Signed Up"}, "start": "welcome",
    "nodes": {
        "welcome": {"type": "send", "channel": "email", "message": {"subject": "Welcome", "text": "Welcome"}, "next": "day"},
        "day": {"type": "wait", "duration": "1d", "next": "launched"},
        "launched": {"type": "branch", "condition": {"did": "Lesson Finished", "within": "2d"},
                     "yes": "tips", "no": "nudge"},
        "tips": {"type": "send", "channel": "push", "message": {"title": "3 tips"}, "next": "ten"},
        "nudge": {"type": "send", "channel": "sms", "message": {"text": "Open the app"}, "next": "ten"},
        "ten": {"type": "wait_until", "time": "10:00", "next": "survey"},
        "survey": {"type": "send", "channel": "email", "message": {"subject": "How is it going?", "text": "How is it going?"}},
    },
}


async def test_a_drip_branches_on_behaviour_and_waits_for_ten_in_each_users_zone(journeys: Journeys) -> None:
    await journeys.save("drip", DRIP)
    await journeys.upload([
        {"identity": "drip-a", "type": "profile", "profileData": {"Tz": "Asia/Kolkata"}},
        {"identity": "drip-b", "type": "profile", "profileData": {"Name": "B"}},
        event("drip-a", "Signed Up"), event("drip-b", "Signed Up"), event("drip-a", "Lesson Finished")])
    await journeys.collect(lambda s: len(s) >= 2)
    branch_at = await journeys.clock.advance(DAY)
    await journeys.collect(lambda s: len(s) >= 4)
    users = await IdentityGraph(journeys.client).lookup(journeys.account, ["identity:drip-a", "identity:drip-b"])
    a, b = users
    assert {(s.user, s.node) for s in journeys.sends} == {(a, "welcome"), (b, "welcome"), (a, "tips"), (b, "nudge")}
    positions = {}
    for user in (a, b):
        settings = journeys.kairos.settings
        stream_key = keys.journey_positions(
            PartitionMap(settings.partitions, settings.shards).partition_of(journeys.account, user))
        raw = await journeys.client.hget(stream_key, field(journeys.account, "drip", user))
        positions[user] = position_decoder.decode(raw)
    assert positions[a].node == positions[b].node == "ten"
    assert positions[a].due_ms == next_local_time(branch_at, clock_time(10), "Asia/Kolkata", "UTC")
    assert positions[b].due_ms == next_local_time(branch_at, clock_time(10), None, "UTC")
    await journeys.clock.advance(min(p.due_ms for p in positions.values()) - branch_at)
    first = min(positions, key=lambda u: positions[u].due_ms)
    await journeys.collect(lambda s: len(s) >= 5)
    await journeys.settle(0.5)
    assert [(s.user, s.node) for s in journeys.sends[4:]] == [(first, "survey")]
    await journeys.clock.advance(DAY)
    await journeys.collect(lambda s: len(s) >= 6)
    stats = await journeys.stats("drip")
    assert stats["v1|completed"] == 2 and stats["v1|node|launched|reached"] == 2


async def test_a_paused_journey_holds_its_users_and_sends_when_resumed(journeys: Journeys) -> None:
    await journeys.save("cart", ABANDONED_CART)
    await journeys.upload([event(f"held-{i}", "Added To Cart", CartId=f"h{i}") for i in range(3)])
    await until_stats(journeys, "cart", {"v1|node|wait_charge|waiting": 3})
    status, _ = await journeys.api.request("POST", "/api/journeys/cart/pause")
    assert status == 200
    await journeys.upload([event("late", "Added To Cart", CartId="late")])  # no entry while paused
    await journeys.clock.advance(HOUR)
    await journeys.settle(1.5)
    assert journeys.sends == []
    status, _ = await journeys.api.request("POST", "/api/journeys/cart/resume")
    assert status == 200
    await journeys.collect(lambda s: len(s) >= 3)
    await journeys.settle(0.5)
    assert len(journeys.sends) == 3 and {s.node for s in journeys.sends} == {"push"}
    assert (await journeys.stats("cart"))["v1|entered"] == 3
