"""The channel router against real Redis and real providers on loopback (firebase-admin
against a local FCM-v1 server, aiohttp against a signature-checking webhook receiver,
the in-app inbox in Redis). Time is the manual clock, so quiet hours and backoff run in
no time. Profiles come from a dict: the shard that holds them is not what is tested here
(tests/integration/test_delivery_runtime.py runs the whole path through Ray)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import msgspec
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from kairos import keys
from kairos.channels.in_app import InAppProvider, Inbox
from kairos.channels.registry import AccountProviders
from kairos.journeys.clock import ManualClock
from kairos.journeys.model import SendRequest
from kairos.models import EventRecord, ProfileRecord, Record
from kairos.partitions import PartitionMap
from kairos.redis_server import EmbeddedRedis
from kairos.routing import feedback
from kairos.routing.delivery_store import DeliveryStore, received
from kairos.routing.feedback import FeedbackForwarder
from kairos.routing.router import ChannelRouter
from kairos.routing.tracking import Tracker
from tests.loopback.aws import MotoLoopback
from tests.loopback.fcm_server import FcmServer
from tests.loopback.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PARTITIONS = 4
SECRET = "whsec-0123456789abcdef"
_ids = itertools.count(1)
_encode = msgspec.msgpack.Encoder().encode
_records = msgspec.msgpack.Decoder(list[Record])


def utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


@pytest.fixture(scope="module")
def router_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    # Its own Redis: the session's Ray deployment runs routers over the shared one.
    with EmbeddedRedis(Path(tmp_path_factory.mktemp("router-redis"))) as server:
        yield server


class DictProfiles:
    def __init__(self) -> None:
        self.by_user: dict[tuple[str, str], dict[str, Any]] = {}
        self.failures = 0  # the next this many lookups fail, as a restarting shard's would
        self.lookups: list[list[str]] = []  # the users of each lookup: one per round

    async def profiles(self, account: str, users: list[str]) -> list[tuple[dict[str, Any], str] | None]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("shard unavailable")
        self.lookups.append(list(users))
        # A user here is named by their identifier, as ingest would resolve it.
        found = [self.by_user.get((account, u)) for u in users]
        return [(props, user) if props is not None else None for props, user in zip(found, users)]


class Harness:
    def __init__(self, client: aioredis.Redis, fcm: FcmServer, hooks: WebhookReceiver) -> None:
        self.redis = client
        self.fcm = fcm
        self.hooks = hooks
        self.account = f"ACC-{next(_ids)}"
        self.clock = ManualClock(client)
        self.profiles = DictProfiles()
        self.partition_map = PartitionMap(PARTITIONS, 1)
        self.inbox = Inbox(client, self.clock)
        self.providers = AccountProviders(client, InAppProvider(self.inbox), ttl_s=0)
        self.store = DeliveryStore(client, self.partition_map, list(range(PARTITIONS)))
        self.router: ChannelRouter | None = None
        self.tracker: Tracker | None = None

    async def start(self, settings: dict[str, Any] | None = None, at: str = "2026-11-24T12:00:00",
                    tracker: Tracker | None = None) -> None:
        await self.clock.set(utc_ms(at))
        base = {"providers": {
            "push": {"provider": "fcm", "project_id": "test-proj", "service_account": self.fcm.service_account(),
                     "endpoint": self.fcm.url, "timeout_s": 2},
            "webhook": {"provider": "webhook", "url": self.hooks.url, "secret": SECRET, "timeout_s": 2}}}
        base.update(settings or {})
        await self.redis.set(keys.delivery_settings(self.account), msgspec.json.encode(base))
        self.tracker = tracker
        self.router = await ChannelRouter.open(self.store, self.profiles, self.providers, self.clock, tracker)

    def user(self, name: str, **props: Any) -> str:
        user = f"identity:{name}"
        self.profiles.by_user[(self.account, user)] = props
        return user

    async def send(self, user: str, channel: str, message: dict[str, Any], **options: Any) -> SendRequest:
        options.setdefault("id", f"{self.account}/j/1/{user}/{next(_ids)}/n")
        request = SendRequest(account=self.account, user=user, channel=channel, message=message, journey="j",
                              version=1, node="n", at_ms=await self.clock.now_ms(), **options)
        partition = self.partition_map.partition_of(self.account, user)
        await self.redis.xadd(keys.outbox(partition), {"s": _encode(request)})
        return request

    async def reopen(self) -> None:
        """A new router process on the same Redis, as after a crash."""
        self.router = await ChannelRouter.open(self.store, self.profiles, self.providers, self.clock, self.tracker)

    async def run(self) -> None:
        """Rounds until nothing is left that is due now."""
        assert self.router is not None
        await self.router.drain()
        while await self.router.step():
            await self.router.drain()

    async def advance(self, ms: int) -> None:
        await self.clock.advance(ms)
        await self.run()

    async def stats(self) -> dict[str, int]:
        raw = await self.redis.hgetall(keys.delivery_stats(self.account))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def feedback(self) -> list[Record]:
        found: list[Record] = []
        for p in range(PARTITIONS):
            for _, fields in await self.redis.xrange(keys.delivery_events(p)):
                if fields[b"a"].decode() == self.account:
                    found.extend(_records.decode(fields[b"r"]))
        return found

    async def dead_letters(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(f[b"d"]) for _, f in await self.redis.xrange(keys.dead_letters(self.account))]

    def pushes_data(self, token: str) -> list[dict[str, Any]]:
        return [m.message["data"] for m in self.fcm.received if m.message["token"] == token]

    def pushes_to(self, token: str) -> list[dict[str, Any]]:
        """The notifications FCM took for the token: {title, body}."""
        return [m.message["notification"] for m in self.fcm.received if m.message["token"] == token]


@pytest_asyncio.fixture
async def harness(router_redis: EmbeddedRedis) -> AsyncIterator[Harness]:
    client = aioredis.Redis.from_url(router_redis.url)
    async with FcmServer() as fcm, WebhookReceiver(SECRET) as hooks:
        made = Harness(client, fcm, hooks)
        yield made
        await made.providers.close()
    await client.aclose()


PUSH = {"title": "Hi {{ profile.Name | default: 'there' }}", "body": "Your {{ event.Product }} is waiting"}
IN_APP = {"title": "Still thinking about {{ event.Product }}?"}


async def test_a_push_is_personalised_and_sent_once_even_when_the_request_repeats(harness: Harness) -> None:
    await harness.start()
    ann = harness.user("ann", Name="Ann", **{"Push Token": "tok-ann"})
    request = await harness.send(ann, "push", PUSH, event={"Product": "red shoes"})
    await harness.run()
    # Upstream retries: the same request id appears again in the outbox.
    partition = harness.partition_map.partition_of(harness.account, ann)
    await harness.redis.xadd(keys.outbox(partition), {"s": _encode(request)})
    await harness.run()

    [push] = harness.pushes_to("tok-ann")
    assert push == {"title": "Hi Ann", "body": "Your red shoes is waiting"}
    stats = await harness.stats()
    assert stats["push|sent"] == 1 and stats["duplicate"] == 1
    sent = [r for r in await harness.feedback() if isinstance(r, EventRecord)]
    assert [(r.name, r.user, r.props["Channel"], r.props["Journey"]) for r in sent] == \
        [("Notification Sent", ann, "push", "j")]


async def test_a_template_that_fails_to_render_is_a_dead_letter_not_half_a_message(harness: Harness) -> None:
    await harness.start()
    bob = harness.user("bob", **{"Push Token": "tok-bob"})
    await harness.send(bob, "push", {"title": "Hi {{ profile.Name }}"})  # no Name, no default
    await harness.run()

    assert harness.pushes_to("tok-bob") == []
    [letter] = await harness.dead_letters()
    assert letter["user"] == bob and "render" in letter["reason"] and "Name" in letter["reason"]
    failed = [r for r in await harness.feedback() if isinstance(r, EventRecord)]
    assert [r.name for r in failed] == ["Notification Failed"]


async def test_each_kind_of_failure_falls_back_to_the_next_channel(harness: Harness) -> None:
    await harness.start({"retry": {"max_attempts": 2, "fallback_after": "1m"}})
    users = {
        "opted-out": harness.user("o", **{"Push Token": "tok-o", "MSG-push": False}),
        "no-token": harness.user("n"),
        "unregistered": harness.user("u", **{"Push Token": "tok-u"}),
        "invalid": harness.user("i", **{"Push Token": "tok-i"}),
    }
    harness.fcm.unregister("tok-u")
    harness.fcm.invalidate("tok-i")
    for user in users.values():
        await harness.send(user, "push", PUSH, event={"Product": "a hat"}, fallback=[("in_app", IN_APP)])
    await harness.run()

    for why, user in users.items():
        [message] = await harness.inbox.list(harness.account, user)
        assert message.message == {"title": "Still thinking about a hat?"}, why
    assert harness.fcm.received == []
    # The unregistered token is removed from the profile, through ingest.
    forgets = [r for r in await harness.feedback() if isinstance(r, ProfileRecord)]
    assert [(r.user, r.props, r.unset_if) for r in forgets] == [(users["unregistered"], {}, {"Push Token": "tok-u"})]


async def test_an_outage_is_retried_with_backoff_and_each_message_goes_out_once(harness: Harness) -> None:
    await harness.start({"retry": {"max_attempts": 5, "fallback_after": "10m"}})
    users = [harness.user(f"r{i}", **{"Push Token": f"tok-r{i}"}) for i in range(5)]
    harness.fcm.set_outage(503)
    for user in users:
        await harness.send(user, "push", PUSH, event={"Product": "x"})
    await harness.run()
    assert harness.fcm.received == [] and (await harness.stats())["push|retried"] == 5

    await harness.advance(1_000)  # before the first backoff (2 s + jitter): nothing yet
    assert harness.fcm.received == []
    harness.fcm.set_outage(None)
    await harness.advance(2_000)
    for i in range(5):
        assert len(harness.pushes_to(f"tok-r{i}")) == 1
    await harness.advance(600_000)  # nothing is left to go out again
    assert len(harness.fcm.received) == 5 and (await harness.stats())["push|sent"] == 5


async def test_an_outage_that_lasts_falls_back_after_the_retries(harness: Harness) -> None:
    await harness.start({"retry": {"max_attempts": 3, "fallback_after": "10m"}})
    carl = harness.user("carl", **{"Push Token": "tok-c"})
    dana = harness.user("dana", **{"Push Token": "tok-d"})
    harness.fcm.set_outage(500)
    await harness.send(carl, "push", PUSH, event={"Product": "x"}, fallback=[("in_app", IN_APP)])
    await harness.send(dana, "push", PUSH, event={"Product": "x"})  # nowhere to fall back to
    await harness.run()
    for _ in range(3):
        await harness.advance(10_000)

    assert harness.fcm.received == []
    assert len(await harness.inbox.list(harness.account, carl)) == 1
    [letter] = await harness.dead_letters()
    assert letter["user"] == dana and letter["reason"].startswith("transient")
    assert harness.fcm.send_requests == 6  # three attempts each, no more


async def test_a_webhook_failing_once_is_retried_and_received_once(harness: Harness) -> None:
    await harness.start()
    erin = harness.user("erin")
    harness.hooks.fail_next(1, 500)
    request = await harness.send(erin, "webhook", {"payload": {"cart": "{{ event.Cart }}"}}, event={"Cart": "c-9"})
    await harness.run()
    await harness.advance(5_000)

    calls = harness.hooks.calls
    assert [c.delivery_id for c in calls] == [request.id, request.id]  # the receiver can dedupe on it
    assert [c.status for c in calls] == [500, 200]
    assert calls[-1].json["message"] == {"payload": {"cart": "c-9"}}


async def test_frequency_caps_drop_what_is_over_and_allow_it_again_later(harness: Harness) -> None:
    await harness.start({"caps": [{"channel": "push", "max": 2, "within": "1d"}, {"min_gap": "1m"}]})
    fay = harness.user("fay", **{"Push Token": "tok-f"})
    await harness.send(fay, "push", PUSH, event={"Product": "1"})
    await harness.run()
    await harness.send(fay, "push", PUSH, event={"Product": "2"})  # within the minimum gap
    await harness.run()
    await harness.advance(120_000)
    await harness.send(fay, "push", PUSH, event={"Product": "3"})
    await harness.send(fay, "in_app", IN_APP, event={"Product": "4"})  # another channel, but the gap
    await harness.run()
    await harness.advance(120_000)
    await harness.send(fay, "push", PUSH, event={"Product": "5"})  # the third push of the day
    await harness.send(fay, "push", PUSH, event={"Product": "6"}, respect_caps=False)  # transactional
    await harness.run()
    await harness.advance(86_400_000)
    await harness.send(fay, "push", PUSH, event={"Product": "7"})
    await harness.run()

    assert [p["body"] for p in harness.pushes_to("tok-f")] == [
        "Your 1 is waiting", "Your 3 is waiting", "Your 6 is waiting", "Your 7 is waiting"]
    stats = await harness.stats()
    assert stats["push|dropped_capped"] == 2 and stats["in_app|dropped_capped"] == 1


async def test_quiet_hours_across_midnight_in_each_users_time_zone(harness: Harness) -> None:
    # 03:00 UTC: 08:30 in Kolkata and 16:00 in Auckland (outside 22:00-08:00), 22:00 the
    # evening before in New York and 04:00 in Berlin (inside).
    await harness.start({"quiet_hours": {"start": "22:00", "end": "08:00", "action": "delay"}},
                        at="2026-11-24T03:00:00")
    zones = {"kolkata": "Asia/Kolkata", "auckland": "Pacific/Auckland", "new_york": "America/New_York",
             "berlin": "Europe/Berlin"}
    for name, tz in zones.items():
        user = harness.user(name, Tz=tz, **{"Push Token": f"tok-{name}"})
        await harness.send(user, "push", PUSH, event={"Product": name})
    nobody = harness.user("no-zone", **{"Push Token": "tok-utc"})  # the default zone: 03:00 UTC
    await harness.send(nobody, "push", PUSH, event={"Product": "utc"})
    drop_me = harness.user("dropped", Tz="Europe/Berlin", **{"Push Token": "tok-drop"})
    await harness.send(drop_me, "push", PUSH, event={"Product": "drop"}, quiet_hours="drop")
    await harness.run()

    def reached() -> set[str]:
        return {m.message["token"].removeprefix("tok-") for m in harness.fcm.received}

    assert reached() == {"kolkata", "auckland"}
    await harness.clock.set(utc_ms("2026-11-24T06:59:00"))
    await harness.run()
    assert reached() == {"kolkata", "auckland"}
    await harness.clock.set(utc_ms("2026-11-24T07:00:00"))  # 08:00 in Berlin
    await harness.run()
    assert reached() == {"kolkata", "auckland", "berlin"}
    await harness.clock.set(utc_ms("2026-11-24T08:00:00"))  # 08:00 UTC
    await harness.run()
    assert reached() == {"kolkata", "auckland", "berlin", "utc"}
    await harness.clock.set(utc_ms("2026-11-24T13:00:00"))  # 08:00 in New York
    await harness.run()
    assert reached() == {"kolkata", "auckland", "berlin", "utc", "new_york"}
    stats = await harness.stats()
    assert stats["push|delayed_quiet_hours"] == 3 and stats["push|dropped_quiet_hours"] == 1


async def test_a_journeys_throttle_spreads_its_messages_over_minutes(harness: Harness) -> None:
    await harness.start(at="2026-11-24T12:00:00")
    users = [harness.user(f"t{i}", **{"Push Token": f"tok-t{i}"}) for i in range(5)]
    for user in users:
        await harness.send(user, "push", PUSH, event={"Product": "x"}, throttle_per_minute=2)
    await harness.run()
    assert len(harness.fcm.received) == 2
    await harness.advance(60_000)
    assert len(harness.fcm.received) == 4
    await harness.advance(60_000)
    assert len(harness.fcm.received) == 5
    assert (await harness.stats())["push|delayed_throttled"] == 3


async def test_in_app_tracking_urls_follow_the_accounts_settings(harness: Harness) -> None:
    tracker = Tracker(bytes(32), "https://t.shop.test")
    await harness.start({"tracking": {"opens": False}}, tracker=tracker)
    gil = harness.user("gil")
    request = await harness.send(gil, "in_app", {"title": "Sale", "url": "shop://sale"})
    await harness.run()
    [item] = await harness.inbox.list(harness.account, gil)
    assert "view_url" not in item.message
    link = tracker.read(item.message["click_url"].rsplit("/", 1)[1])
    partition = harness.partition_map.partition_of(harness.account, gil)
    assert (link.url, link.partition, link.sent.send_id, link.sent.identifier) == ("shop://sale", partition, request.id, gil)


async def test_a_throttled_message_delayed_again_still_goes_out(harness: Harness) -> None:
    await harness.start(at="2026-11-24T12:00:00")
    users = [harness.user(f"v{i}", **{"Push Token": f"tok-v{i}"}) for i in range(4)]
    for user in users:
        await harness.send(user, "push", PUSH, event={"Product": "x"}, throttle_per_minute=1)
    await harness.run()
    # Another send of the journey takes this minute's slot: the overflow is delayed again.
    await harness.redis.incrby(keys.throttle(harness.account, "journey:j", utc_ms("2026-11-24T12:01:00") // 60_000), 1)
    for _ in range(6):
        await harness.advance(60_000)
    assert sorted(m.message["token"] for m in harness.fcm.received) == [f"tok-v{i}" for i in range(4)]


async def test_a_retry_that_falls_due_in_quiet_hours_waits_for_the_morning(harness: Harness) -> None:
    await harness.start({"quiet_hours": {"start": "22:00", "end": "08:00", "action": "delay"}},
                        at="2026-11-24T21:59:59")
    hal = harness.user("hal", **{"Push Token": "tok-h"})
    harness.fcm.set_outage(503)
    await harness.send(hal, "push", PUSH, event={"Product": "x"})
    await harness.run()
    harness.fcm.set_outage(None)
    await harness.advance(5_000)  # the retry is due at 22:00:0x: delayed a second time
    assert harness.fcm.received == []
    await harness.clock.set(utc_ms("2026-11-25T08:00:01"))
    await harness.run()
    assert len(harness.pushes_to("tok-h")) == 1


async def test_a_fallback_is_not_capped_by_the_attempt_that_failed(harness: Harness) -> None:
    await harness.start({"caps": [{"min_gap": "1h"}, {"per": "journey", "max": 1, "within": "1d"}]})
    ivy = harness.user("ivy", **{"Push Token": "tok-ivy"})
    harness.fcm.unregister("tok-ivy")
    await harness.send(ivy, "push", PUSH, event={"Product": "a hat"}, fallback=[("in_app", IN_APP)])
    await harness.run()
    assert len(await harness.inbox.list(harness.account, ivy)) == 1
    stats = await harness.stats()
    assert stats["push|rejected"] == 1 and stats["in_app|sent"] == 1 and "in_app|dropped_capped" not in stats
    # The delivered fallback does count: the next message within the gap is capped.
    await harness.send(ivy, "in_app", IN_APP, event={"Product": "a scarf"})
    await harness.run()
    assert (await harness.stats())["in_app|dropped_capped"] == 1


async def test_a_push_not_reported_arriving_in_time_falls_back_and_one_that_arrived_does_not(
        harness: Harness) -> None:
    tracker = Tracker(bytes(32), "https://t.shop.test")
    await harness.start({"caps": [{"min_gap": "1h"}]}, tracker=tracker)
    users = {name: harness.user(name, **{"Push Token": f"tok-{name}"}) for name in ("arrives", "offline", "late")}
    requests = {name: await harness.send(user, "push", PUSH, event={"Product": "a hat"}, deliver_within_ms=900_000,
                                         fallback=[("in_app", IN_APP)])
                for name, user in users.items()}
    await harness.run()
    assert len(harness.fcm.received) == 3

    def report(name: str) -> Any:
        # What the tracking endpoint does when the app calls kairos_delivered_url.
        [push] = harness.pushes_data(f"tok-{name}")
        link = tracker.read(push["kairos_delivered_url"].rsplit("/", 1)[1])
        assert link.sent.send_id == requests[name].id
        return received(harness.redis, link.partition, link.sent.send_id)

    await report("arrives")
    await harness.advance(600_000)
    await harness.reopen()  # the check survives a router restart: it is in Redis
    await harness.advance(300_001)
    await report("late")  # after the fallback went: it changes nothing

    assert await harness.inbox.list(harness.account, users["arrives"]) == []
    for name in ("offline", "late"):
        [message] = await harness.inbox.list(harness.account, users[name])
        assert message.message["title"] == "Still thinking about a hat?"
    stats = await harness.stats()
    # The fallback is the same message: the push before it does not trip the 1 h gap.
    assert stats["push|sent"] == 3 and stats["push|arrived"] == 1 and stats["push|not_arrived"] == 2
    assert stats["in_app|sent"] == 2 and "in_app|dropped_capped" not in stats
    # The pushes that went out still count: another push within the hour is capped.
    await harness.send(users["offline"], "push", PUSH, event={"Product": "a cap"})
    await harness.run()
    assert (await harness.stats())["push|dropped_capped"] == 1
    stats = await harness.stats()
    await harness.advance(86_400_000)
    assert len(harness.fcm.received) == 3 and stats == await harness.stats()
    for p in range(PARTITIONS):  # no receipt is left behind
        assert await harness.redis.keys(keys.arrival_receipt(p, "*")) == []


async def test_an_arrival_reported_before_the_outcome_is_written_counts(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = Tracker(bytes(32), "https://t.shop.test")
    await harness.start(tracker=tracker)
    quick = harness.user("quick", **{"Push Token": "tok-quick"})
    await harness.send(quick, "push", PUSH, event={"Product": "x"}, deliver_within_ms=60_000,
                       fallback=[("in_app", IN_APP)])
    router = harness.router
    assert router is not None
    deliver = router._deliver

    async def phone_reports_at_once(*args: Any) -> Any:
        outcomes = await deliver(*args)
        # The phone calls back before the router has written what FCM said.
        [data] = harness.pushes_data("tok-quick")
        link = tracker.read(data["kairos_delivered_url"].rsplit("/", 1)[1])
        await received(harness.redis, link.partition, link.sent.send_id)
        return outcomes

    monkeypatch.setattr(router, "_deliver", phone_reports_at_once)
    await harness.run()
    await harness.advance(120_000)
    assert await harness.inbox.list(harness.account, quick) == []
    assert (await harness.stats())["push|arrived"] == 1


async def test_settling_orphans_never_takes_a_fallback_batch_that_is_out(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    await harness.start()
    uma = harness.user("uma", **{"Push Token": "tok-uma"})
    harness.fcm.unregister("tok-uma")
    await harness.send(uma, "push", PUSH, event={"Product": "x"}, fallback=[("in_app", IN_APP)])
    router = harness.router
    assert router is not None
    commit = harness.store.commit
    claimed = 0

    async def settle_right_after_each_claim(pending: Any) -> None:
        nonlocal claimed
        await commit(pending)
        if pending.claimed:
            claimed += 1
            await router._settle_orphans()  # as the run loop would after some other failure

    monkeypatch.setattr(harness.store, "commit", settle_right_after_each_claim)
    await harness.run()
    assert claimed == 2  # the push, then its in-app fallback
    assert len(await harness.inbox.list(harness.account, uma)) == 1
    stats = await harness.stats()
    assert stats["in_app|sent"] == 1 and "in_app|unknown" not in stats and await harness.dead_letters() == []


async def test_without_tracking_a_push_is_not_awaited(harness: Harness) -> None:
    await harness.start()  # no tracker: the app has nowhere to report arrival
    moe = harness.user("moe", **{"Push Token": "tok-moe"})
    await harness.send(moe, "push", PUSH, event={"Product": "x"}, deliver_within_ms=60_000,
                       fallback=[("in_app", IN_APP)])
    await harness.run()
    await harness.advance(120_000)
    assert len(harness.pushes_to("tok-moe")) == 1 and await harness.inbox.list(harness.account, moe) == []


async def test_a_round_that_fails_is_read_again(harness: Harness) -> None:
    await harness.start()
    kim = harness.user("kim", **{"Push Token": "tok-k"})
    await harness.send(kim, "push", PUSH, event={"Product": "x"})
    harness.profiles.failures = 1
    assert harness.router is not None
    with pytest.raises(RuntimeError, match="shard unavailable"):
        await harness.router.step()
    await harness.run()
    assert len(harness.pushes_to("tok-k")) == 1


@pytest.mark.parametrize("how", ["process dies", "batch fails"])
async def test_a_crash_after_the_hand_over_is_counted_unknown_and_not_sent_again(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    await harness.start()
    lou = harness.user("lou", **{"Push Token": "tok-l"})
    request = await harness.send(lou, "push", PUSH, event={"Product": "x"})
    router = harness.router
    assert router is not None
    handed_over = asyncio.Event()

    async def dies(*args: Any) -> None:
        handed_over.set()
        if how == "batch fails":
            raise RuntimeError("writing the outcome failed")
        await asyncio.Event().wait()  # the process is gone before the provider answers

    monkeypatch.setattr(router, "_deliver", dies)
    await router.step()
    await handed_over.wait()
    if how == "process dies":
        for batch in list(router._batches):
            batch.cancel()
        await harness.reopen()
    else:  # the same router's loop settles what the failed batch left
        await router.drain()
        stopping = asyncio.Event()
        loop = asyncio.ensure_future(router.run(stopping, idle_ms=10))
        while "push|unknown" not in await harness.stats():
            await asyncio.sleep(0.01)
        stopping.set()
        await loop
    await harness.run()
    await harness.advance(600_000)

    assert harness.fcm.received == []  # it may have gone out: never a second time
    stats = await harness.stats()
    assert stats["push|unknown"] == 1 and stats["journey:j|unknown"] == 1 and "push|sent" not in stats
    [letter] = await harness.dead_letters()
    assert letter["id"] == request.id and letter["reason"].startswith("unknown")
    assert not await harness.redis.hlen(keys.router_in_flight(harness.partition_map.partition_of(harness.account, lou)))


async def test_a_trickle_of_sends_shares_rounds_after_a_light_one(harness: Harness) -> None:
    # Each round costs a profile lookup (a Ray call to the shard) and several Redis round
    # trips: after a round that was not full, the router lingers, and what arrives
    # meanwhile goes out together in the next one.
    await harness.start()
    users = [harness.user(name, **{"Push Token": f"tok-{name}"}) for name in ("ann", "bob", "cy")]
    stopping = asyncio.Event()
    assert harness.router is not None
    loop = asyncio.ensure_future(harness.router.run(stopping, idle_ms=10, linger_ms=600))
    try:
        await harness.send(users[0], "push", {"title": "first"})
        while not harness.fcm.received:
            await asyncio.sleep(0.005)
        await harness.send(users[1], "push", {"title": "second"})
        await asyncio.sleep(0.1)  # a round of its own, were there no linger
        await harness.send(users[2], "push", {"title": "third"})
        while len(harness.fcm.received) < 3:
            await asyncio.sleep(0.005)
    finally:
        stopping.set()
        await loop
    assert [sorted(lookup) for lookup in harness.profiles.lookups] == [[users[0]], sorted(users[1:])]
    assert sorted(m.message["token"] for m in harness.fcm.received) == ["tok-ann", "tok-bob", "tok-cy"]


async def test_a_slow_provider_holds_up_only_its_own_batch(harness: Harness) -> None:
    await harness.start()
    slow_user = harness.user("sal")
    harness.hooks.slow(1.5, count=1)  # one account's webhook takes its time
    first = await harness.send(slow_user, "webhook", {"payload": {"n": 1}})
    router = harness.router
    assert router is not None
    await router.step()
    # Meanwhile: another user's push, and a second message for the user whose batch is out.
    tia = harness.user("tia", **{"Push Token": "tok-tia"})
    await harness.send(tia, "push", PUSH, event={"Product": "x"})
    second = await harness.send(slow_user, "webhook", {"payload": {"n": 2}})
    started = asyncio.get_running_loop().time()
    await router.step()
    while not harness.pushes_to("tok-tia"):
        await router.step(block_ms=10)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert "webhook|sent" not in await harness.stats()  # the slow call has not answered yet
    await harness.run()  # the slow call ends
    await harness.advance(1_000)  # the held message is looked at again, and goes

    assert [c.delivery_id for c in harness.hooks.calls] == [first.id, second.id]
    stats = await harness.stats()
    assert stats["webhook|sent"] == 2 and stats["push|sent"] == 1 and "duplicate" not in stats


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoLoopback]:
    with MotoLoopback() as server:
        yield server


async def test_push_then_sms_then_email_through_real_provider_clients(harness: Harness, moto: MotoLoopback) -> None:
    moto.reset()
    moto.client("sesv2").create_email_identity(EmailIdentity="shop@example.com")
    await harness.start({"providers": {
        "push": {"provider": "fcm", "project_id": "test-proj", "service_account": harness.fcm.service_account(),
                 "endpoint": harness.fcm.url, "timeout_s": 2},
        "sms": {"provider": "sns", **moto.settings()},
        "email": {"provider": "ses", **moto.settings(from_address="Shop <shop@example.com>")}}})
    users = {
        "push": harness.user("pat", **{"Push Token": "tok-pat", "Phone": "+14155550101", "Email": "pat@example.org"}),
        "sms": harness.user("pia", **{"Phone": "+14155550102", "Email": "pia@example.org"}),  # no token
        # Token unregistered, then SNS refuses the number: email, and both addresses are forgotten.
        "email": harness.user("quin", **{"Push Token": "tok-quin", "Phone": "+0-not-a-number",
                                         "Email": "quin@example.org"}),
        # Opted out of SMS: straight from push to email.
        "opted": harness.user("rae", **{"Phone": "+14155550104", "MSG-sms": "no", "Email": "rae@example.org"}),
    }
    harness.fcm.unregister("tok-quin")
    sms_message = {"text": "{{ event.Product }} is back in stock"}
    email_message = {"subject": "Back in stock", "text": "{{ event.Product }} is back, {{ profile.Email }}"}
    for user in users.values():
        await harness.send(user, "push", PUSH, event={"Product": "the red hat"},
                           fallback=[("sms", sms_message), ("email", email_message)])
    await harness.run()

    assert [m.message["token"] for m in harness.fcm.received] == ["tok-pat"]
    records = moto.records()
    assert [(m.phone_number, m.message) for m in records.sms] == [("+14155550102", "the red hat is back in stock")]
    assert sorted((m.to[0], m.body) for m in records.emails) == [
        ("quin@example.org", "the red hat is back, quin@example.org"),
        ("rae@example.org", "the red hat is back, rae@example.org")]
    forgets = [(r.user, r.unset_if) for r in await harness.feedback() if isinstance(r, ProfileRecord)]
    assert sorted(forgets, key=str) == [(users["email"], {"Phone": "+0-not-a-number"}),
                                        (users["email"], {"Push Token": "tok-quin"})]
    stats = await harness.stats()
    assert (stats["push|sent"], stats["sms|sent"], stats["email|sent"]) == (1, 1, 2)


async def test_the_sweep_forgets_histories_that_no_longer_matter(harness: Harness) -> None:
    await harness.start({"quiet_hours": {"start": "22:00", "end": "08:00", "action": "delay"},
                         "caps": [{"channel": "push", "max": 3, "within": "10d"}]}, at="2026-11-24T12:00:00")
    old = harness.user("old", **{"Push Token": "tok-old"})
    waiting = harness.user("waiting", **{"Push Token": "tok-w"}, Tz="Pacific/Kiritimati")  # 02:00 there: delayed
    await harness.send(old, "push", PUSH, event={"Product": "x"})
    await harness.send(waiting, "push", PUSH, event={"Product": "y"}, quiet_hours="delay")
    await harness.run()
    assert harness.router is not None
    refs = [(harness.account, old), (harness.account, waiting)]
    await harness.clock.advance(9 * 86_400_000)
    await harness.router.sweep(await harness.clock.now_ms())
    histories = await harness.store.histories(refs)
    assert [len(histories[ref]) for ref in refs] == [1, 1]  # within the caps' 10 days: still counted
    await harness.clock.advance(2 * 86_400_000)
    assert await harness.router.sweep(await harness.clock.now_ms()) >= 1  # (other tests' users go too)
    histories = await harness.store.histories(refs)
    assert [len(histories[ref]) for ref in refs] == [0, 1]  # the waiting request keeps its entry


async def push_for_another_account(harness: Harness, name: str) -> str:
    """Queues a push for `name` of a new account (with FCM set up); returns the account."""
    other = f"ACC-{next(_ids)}"
    await harness.redis.set(keys.delivery_settings(other), msgspec.json.encode({"providers": {"push": {
        "provider": "fcm", "project_id": "test-proj", "service_account": harness.fcm.service_account(),
        "endpoint": harness.fcm.url, "timeout_s": 2}}}))
    user = f"identity:{name}"
    harness.profiles.by_user[(other, user)] = {"Push Token": f"tok-{name}"}
    request = SendRequest(id=f"{other}/j/1/{name}/1/n", account=other, user=user, channel="push", message=PUSH,
                          journey="j", version=1, node="n", at_ms=await harness.clock.now_ms(), event={"Product": "x"})
    await harness.redis.xadd(keys.outbox(harness.partition_map.partition_of(other, user)), {"s": _encode(request)})
    return other


async def test_a_slow_account_does_not_hold_up_another_accounts_messages_in_the_same_round(
        harness: Harness) -> None:
    await harness.start()
    slow_user = harness.user("slow-one")
    harness.hooks.slow(1.5, count=1)
    await harness.send(slow_user, "webhook", {"payload": {"n": 1}})
    other = await push_for_another_account(harness, "vic")  # decided in the same round
    router = harness.router
    assert router is not None
    while router.handled < 2:
        await router.step(block_ms=10)
    started = asyncio.get_running_loop().time()
    while not await harness.redis.hget(keys.delivery_stats(other), "push|sent"):
        assert asyncio.get_running_loop().time() - started < 1.0, "the other account waited for the slow webhook"
        await asyncio.sleep(0.01)
    assert "webhook|sent" not in await harness.stats()
    await harness.run()
    assert (await harness.stats())["webhook|sent"] == 1


async def test_an_account_with_many_slow_batches_out_does_not_stall_the_router(harness: Harness) -> None:
    await harness.start()
    harness.hooks.slow(1.0, count=12)
    router = harness.router
    assert router is not None
    for i in range(12):  # a batch per round, more than an account may have out at once
        await harness.send(harness.user(f"slow-{i}"), "webhook", {"payload": {"n": i}})
        await router.step(block_ms=10)
    await push_for_another_account(harness, "wes")
    started = asyncio.get_running_loop().time()
    while not harness.pushes_to("tok-wes"):
        assert asyncio.get_running_loop().time() - started < 0.8, "the router waited for the slow account"
        await router.step(block_ms=10)
    for _ in range(30):  # the slow account's waiting messages go as its batches end
        await harness.advance(200)
        await asyncio.sleep(0.1)
    await harness.run()
    assert (await harness.stats())["webhook|sent"] == 12


async def test_the_sweep_leaves_the_users_of_batches_still_out_alone(harness: Harness) -> None:
    await harness.start()
    sal = harness.user("sweep-sal")
    harness.hooks.slow(1.0, count=1)
    await harness.send(sal, "webhook", {"payload": {"n": 1}})
    router = harness.router
    assert router is not None
    await router.step()  # the call is out: the batch will write sal's history when it ends
    await harness.clock.advance(8 * 86_400_000)  # past the dedupe window: the claim looks old
    await router.sweep(await harness.clock.now_ms())
    ref = (harness.account, sal)
    assert [e.state for e in (await harness.store.histories([ref]))[ref]] == ["c"]  # not rewritten under the batch
    await harness.run()
    await router.sweep(await harness.clock.now_ms())
    assert [e.state for e in (await harness.store.histories([ref]))[ref]] == ["d"]


async def test_delivery_events_go_to_ingest_in_one_call_per_account_and_leave_the_queue(
        router_redis: EmbeddedRedis) -> None:
    client = aioredis.Redis.from_url(router_redis.url)
    partitions = list(range(PARTITIONS))
    try:
        for partition in partitions:
            await client.delete(keys.delivery_events(partition))
        handed: list[tuple[str, list[str]]] = []
        down: set[str] = set()

        async def ingest(account: str, records: list[Record]) -> None:
            if account in down:
                raise ConnectionError(f"the ingest actor of {account} is restarting")
            handed.append((account, [r.message_id or "" for r in records]))

        def event(n: int) -> EventRecord:
            return EventRecord(user=f"i:u{n}", ts_ms=1, name="Notification Sent", props={}, message_id=f"m{n}")

        async def queued() -> list[int]:
            return [await client.xlen(keys.delivery_events(p)) for p in partitions]

        for n, (partition, account) in enumerate([(0, "acc-a"), (1, "acc-a"), (2, "acc-b"), (2, "acc-a")]):
            await feedback.append(client, partition, account, [event(n)])
        forwarder = FeedbackForwarder(client, partitions, ingest)
        assert await forwarder.step() == 4
        assert sorted(handed) == [("acc-a", ["m0", "m1", "m3"]), ("acc-b", ["m2"])]  # each stream in its order
        assert await queued() == [0, 0, 0, 0]
        assert await forwarder.step(block_ms=10) == 0
        assert len(handed) == 2

        # One account's ingest is down: the others' events still go, and only its own wait.
        handed.clear()
        down.add("acc-b")
        for n, (partition, account) in enumerate([(0, "acc-a"), (2, "acc-b"), (2, "acc-a")], start=10):
            await feedback.append(client, partition, account, [event(n)])
        with pytest.raises(ConnectionError, match="acc-b"):
            await forwarder.step()
        assert handed == [("acc-a", ["m10", "m12"])]
        assert await queued() == [0, 0, 1, 0]
        down.clear()
        assert await forwarder.step() == 1
        assert handed == [("acc-a", ["m10", "m12"]), ("acc-b", ["m11"])]  # acc-a's not sent again
        assert await queued() == [0, 0, 0, 0]
    finally:
        await client.aclose()
