"""Delivery on the running deployment: a journey's message goes from the journey actor
through the channel router to a real provider client on loopback, and the outcome comes
back into the user's own event stream; the in-app inbox and the delivery settings work
through the gateway."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from kairos.journeys.clock import ManualClock
from tests.integration.conftest import Api, Kairos
from tests.loopback.fcm_server import FcmServerThread
from tests.loopback.smtp import SmtpLoopback
from tests.loopback.webhook_receiver import ThreadedWebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "whsec-runtime-0123456789"


@pytest.fixture(scope="module")
def fcm() -> Iterator[FcmServerThread]:
    with FcmServerThread() as server:
        yield server


@pytest.fixture(scope="module")
def hooks() -> Iterator[ThreadedWebhookReceiver]:
    with ThreadedWebhookReceiver(SECRET) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def mail() -> Iterator[SmtpLoopback]:
    with SmtpLoopback() as server:
        yield server


@pytest_asyncio.fixture
async def api(make_api: Callable[[], Awaitable[Api]], fcm: FcmServerThread,
              hooks: ThreadedWebhookReceiver, mail: SmtpLoopback) -> AsyncIterator[Api]:
    made = await make_api()
    status, body = await made.request("PUT", "/api/settings/delivery", {"settings": {"providers": {
        "push": {"provider": "fcm", "project_id": "test-proj", "service_account": fcm.service_account(),
                 "endpoint": fcm.url, "timeout_s": 5},
        "email": {"provider": "smtp", "host": mail.host, "port": mail.port, "security": "none",
                  "from_address": "news@shop.test"},
        "webhook": {"provider": "webhook", "url": hooks.url, "secret": SECRET}}}})
    assert status == 200, body
    yield made


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 30.0,
                     until: Callable[[Any], bool] = bool) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if until(found):
            return found
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def now_s(kairos: Kairos, api: Api) -> int:
    # The deployment runs on the manual clock: stamp entry events with its time.
    client = aioredis.Redis.from_url(kairos.settings.redis_url)
    try:
        return await ManualClock(client).now_ms() // 1000
    finally:
        await client.aclose()


async def enter_journey(kairos: Kairos, api: Api, name: str, definition: dict[str, Any],
                        profiles: dict[str, dict[str, Any]], event: str, props: dict[str, Any] | None = None) -> None:
    """Saves the journey, uploads the users' profiles, then the event that enters them."""
    status, body = await api.upload([{"identity": i, "type": "profile", "profileData": p} for i, p in profiles.items()])
    assert status == 200 and body["processed"] == len(profiles), body
    status, body = await api.request("PUT", f"/api/journeys/{name}", {"definition": definition})
    assert status == 200, body
    ts = await now_s(kairos, api)
    status, body = await api.upload([{"identity": i, "type": "event", "evtName": event, "ts": ts,
                                      "evtData": props or {}} for i in profiles])
    assert status == 200 and body["processed"] == len(profiles), body


WELCOME = {
    "entry": {"event": "Signed Up"},
    "start": "push",
    "nodes": {
        "push": {"type": "send", "channel": "push",
                 "message": {"title": "Welcome, {{ profile.Name }}", "body": "Your plan: {{ event.Plan }}"},
                 "fallback": [{"channel": "in_app", "message": {"title": "Welcome! You chose {{ event.Plan }}"}}],
                 "next": "hook"},
        "hook": {"type": "send", "channel": "webhook", "message": {"payload": {"plan": "{{ event.Plan }}"}}},
    },
}


async def test_a_journey_message_reaches_the_provider_and_comes_back_as_events(
        kairos: Kairos, api: Api, fcm: FcmServerThread, hooks: ThreadedWebhookReceiver) -> None:
    status, body = await api.upload([
        {"identity": "ann", "type": "profile", "profileData": {"Name": "Ann", "Push Token": "rt-ann"}},
        {"identity": "bob", "type": "profile", "profileData": {"Name": "Bob"}},  # no token: in-app
    ])
    assert status == 200 and body["processed"] == 2, body
    status, body = await api.request("PUT", "/api/journeys/welcome", {"definition": WELCOME})
    assert status == 200, body
    ts = await now_s(kairos, api)
    status, body = await api.upload([{"identity": u, "type": "event", "evtName": "Signed Up", "ts": ts,
                                      "evtData": {"Plan": "pro"}} for u in ("ann", "bob")])
    assert status == 200, body

    async def pushed() -> list[Any]:
        return [m for m in fcm.received if m.message["token"] == "rt-ann"]

    [push] = await eventually(pushed)
    assert push.message["notification"] == {"title": "Welcome, Ann", "body": "Your plan: pro"}
    # The app reports the notification's arrival through the URL in its data payload.
    async with api.session.get(push.message["data"]["kairos_delivered_url"]) as response:
        assert response.status == 204

    async def inbox() -> list[Any]:
        status, body = await api.request("GET", "/1/inbox?identity=bob")
        assert status == 200, body
        return body["messages"]

    [message] = await eventually(inbox)
    assert message["message"]["title"] == "Welcome! You chose pro" and message["read"] is False
    # The app reports a tap through the message's click_url (no link: nothing to redirect to).
    async with api.session.get(message["message"]["click_url"], allow_redirects=False) as response:
        assert response.status == 204
    await eventually(lambda: asyncio.sleep(0, result=len([c for c in hooks.calls
                                                          if c.json["account"] == api.creds.account_id]) == 2))

    async def fed_back() -> bool:
        status, body = await api.profile(identity="ann")
        return status == 200 and "Notification Sent" in body["record"].get("events", {})

    # The outcome is in the user's own event stream: segments, waits and goals can use it.
    await eventually(fed_back)
    # Push + webhook for ann, in-app + webhook for bob; the webhooks' may still be on their way.
    await eventually(lambda: api.count_events("Notification Sent"), until=lambda sent: sent >= 4)
    assert await api.count_events("Notification Sent") == 4
    await eventually(lambda: api.count_events("Notification Clicked"))
    # Delivered: ann's push (reported by the app), bob's in-app message, both webhooks (2xx).
    assert await api.count_events("Notification Delivered") == 4

    status, body = await api.request("POST", "/1/inbox/read", {"identity": "bob", "ids": [message["id"]]})
    assert status == 200 and body["marked"] == 1
    status, body = await api.request("GET", "/1/inbox?identity=bob&unread=1")
    assert body["messages"] == [] and body["unread"] == 0
    status, stats = await api.request("GET", "/api/deliveries/stats")
    assert stats["channels"]["push"]["sent"] == 1 and stats["channels"]["in_app"]["sent"] == 1
    assert stats["sources"]["journey:welcome"]["sent"] == 4


async def test_the_inbox_stream_shows_new_messages_as_they_arrive(kairos: Kairos, api: Api) -> None:
    status, _ = await api.upload([{"identity": "cleo", "type": "profile", "profileData": {"Name": "Cleo"}}])
    assert status == 200
    status, body = await api.request("PUT", "/api/journeys/nudge", {"definition": {
        "entry": {"event": "Opened App"}, "start": "hi", "reentry": "always",
        "nodes": {"hi": {"type": "send", "channel": "in_app", "message": {"title": "Hi {{ profile.Name }}"}}}}})
    assert status == 200, body
    async with api.session.get(api.base + "/1/inbox/stream?identity=cleo", headers=api.headers,
                               timeout=aiohttp.ClientTimeout(total=60)) as stream:
        assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
        assert await stream.content.readline() == b": connected\n"
        ts = await now_s(kairos, api)
        await api.upload([{"identity": "cleo", "type": "event", "evtName": "Opened App", "ts": ts, "evtData": {}}])
        lines = []
        while not any(line.startswith(b"data: ") for line in lines):
            lines.append(await asyncio.wait_for(stream.content.readline(), 30))
        assert b"event: message\n" in lines
        data = next(line for line in lines if line.startswith(b"data: "))
        assert b'"title":"Hi Cleo"' in data


async def test_delivery_settings_hide_secrets_and_name_what_is_wrong(api: Api) -> None:
    status, body = await api.request("GET", "/api/settings/delivery")
    assert status == 200
    push = body["settings"]["providers"]["push"]
    assert push["service_account"] == "********" and body["settings"]["providers"]["webhook"]["secret"] == "********"
    # What GET showed can be sent back with one change: the secrets are kept.
    settings = body["settings"]
    settings["caps"] = [{"channel": "push", "max": 3, "within": "7d"}]
    status, body = await api.request("PUT", "/api/settings/delivery", {"settings": settings})
    assert status == 200, body
    status, body = await api.request("PUT", "/api/settings/delivery", {"settings": {
        "quiet_hours": {"start": "22:00", "end": "25:00"}}})
    assert status == 400 and body["path"] == "settings.quiet_hours.end", body
    status, body = await api.request("PUT", "/api/settings/delivery", {"settings": {"providers": {
        "email": {"provider": "carrier-pigeon"}}}})
    assert status == 400 and body["path"] == "settings.providers.email.provider", body
    status, body = await api.request("GET", "/1/inbox?identity=nobody-at-all")
    assert status == 404 and body["status"] == "fail", body
    for limit in ("0", "1001", "x", "9" * 5000):  # a huge number is a 400, not int()'s error
        status, body = await api.request("GET", f"/api/deliveries/dead-letters?limit={limit}")
        assert status == 400 and body["path"] == "limit", (limit[:10], body)


NEWSLETTER = {
    "entry": {"event": "Subscribed"},
    "start": "mail",
    "nodes": {
        "mail": {"type": "send", "channel": "email", "message": {
            "subject": "Hello {{ profile.Name }}",
            "html": "<html><body><p>Hi {{ profile.Name }}</p><a href=\"https://shop.test/sale?a=1&amp;b=2\">Sale</a>"
                    "<a href='mailto:help@shop.test'>Help</a></body></html>",
            "text": "Sale: https://shop.test/sale"}},
    },
}


async def test_email_opens_and_clicks_come_back_as_events_once_each(
        kairos: Kairos, api: Api, mail: SmtpLoopback) -> None:
    address = f"dora-{api.creds.account_id}@shop.test"
    await enter_journey(kairos, api, "newsletter", NEWSLETTER, {"dora": {"Name": "Dora", "Email": address}},
                        "Subscribed")

    async def received() -> list[Any]:
        return [m for m in mail.messages if address in m.rcpt_tos]

    [sent] = await eventually(received)
    body_part = sent.message.get_body(("html",))
    assert body_part is not None
    html = body_part.get_content()
    clicks = re.findall(r'href="([^"]+)"', html)
    [pixel] = re.findall(r'<img src="([^"]+)"', html)
    assert len(clicks) == 1 and clicks[0].startswith(api.base + "/t/c/"), html
    assert "mailto:help@shop.test" in html and "Hi Dora" in html and "dora" not in clicks[0] + pixel

    # Link scanners probe with HEAD: answered, not counted.
    async with api.session.head(clicks[0], allow_redirects=False) as response:
        assert response.status == 302
    for _ in range(2):  # a reader clicks twice and opens the mail twice: one click, one view
        async with api.session.get(clicks[0], allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "https://shop.test/sale?a=1&b=2"
        async with api.session.get(pixel) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/gif"

    async def counted() -> bool:
        return await api.count_events("Notification Clicked") == 1 and await api.count_events("Notification Viewed") == 1

    await eventually(counted)
    status, profile = await api.profile(identity="dora")
    assert status == 200 and "Notification Clicked" in profile["record"]["events"]
    # A segment can select the readers who clicked this journey's link.
    status, body = await api.request("POST", "/api/segments/count", {"as_of": await now_s(kairos, api), "segment": {
        "did": "Notification Clicked", "where": [{"property": "Journey", "op": "eq", "value": "newsletter"},
                                                 {"property": "Url", "op": "eq", "value": "https://shop.test/sale?a=1&b=2"}]}})
    assert status == 200 and body["count"] == 1, body

    # A forged or cut token is refused with the API's error shape, and records nothing.
    async with api.session.get(clicks[0][:-6], allow_redirects=False) as response:
        assert response.status == 400 and (await response.json())["status"] == "fail"
    async with api.session.get(api.base + "/t/o/" + "A" * 80) as response:
        assert response.status == 400


ARRIVAL = {
    "entry": {"event": "Ordered"},
    "start": "shipped",
    "nodes": {"shipped": {"type": "send", "channel": "push", "message": {"title": "Shipped, {{ profile.Name }}"},
                          "deliver_within": "15m",
                          "fallback": [{"channel": "email", "message": {"subject": "Shipped", "text": "On its way"}}]}},
}


async def test_a_push_the_app_does_not_report_arriving_falls_back_to_email(
        kairos: Kairos, api: Api, fcm: FcmServerThread, mail: SmtpLoopback) -> None:
    addresses = {name: f"{name}-{api.creds.account_id}@shop.test" for name in ("eli", "fay")}
    await enter_journey(kairos, api, "shipping", ARRIVAL, {name: {
        "Name": name.title(), "Email": address, "Push Token": f"arrival-{name}-{api.creds.account_id}"}
        for name, address in addresses.items()}, "Ordered")

    async def pushed() -> list[Any]:
        found = [m for m in fcm.received if m.message["token"].endswith(api.creds.account_id)]
        return found if len(found) == 2 else []

    [eli_push] = [m for m in await eventually(pushed) if m.message["token"].startswith("arrival-eli")]
    async with api.session.get(eli_push.message["data"]["kairos_delivered_url"]) as response:
        assert response.status == 204  # eli's phone got it; fay's is off

    client = aioredis.Redis.from_url(kairos.settings.redis_url)
    try:
        await ManualClock(client).advance(16 * 60_000)
    finally:
        await client.aclose()

    async def emailed() -> list[Any]:
        return [m for m in mail.messages if any(a in m.rcpt_tos for a in addresses.values())]

    [email] = await eventually(emailed)
    assert email.rcpt_tos == [addresses["fay"]] and email.message["Subject"] == "Shipped"
    status, stats = await api.request("GET", "/api/deliveries/stats")
    assert stats["channels"]["push"]["arrived"] == 1 and stats["channels"]["push"]["not_arrived"] == 1
    assert stats["sources"]["journey:shipping"]["not_arrived"] == 1


async def test_an_unregistered_token_is_removed_from_the_profile(
        kairos: Kairos, api: Api, fcm: FcmServerThread) -> None:
    token = f"gone-{api.creds.account_id}"
    fcm.unregister(token)  # the app was uninstalled
    await enter_journey(kairos, api, "welcome", WELCOME, {"gus": {"Name": "Gus", "Push Token": token}},
                        "Signed Up", {"Plan": "free"})

    async def forgotten() -> bool:
        status, body = await api.profile(identity="gus")
        return status == 200 and body["record"]["profileData"].get("Push Token") is None

    await eventually(forgotten)
    status, body = await api.request("GET", "/1/inbox?identity=gus")
    assert [m["message"]["title"] for m in body["messages"]] == ["Welcome! You chose free"]
    status, body = await api.profile(identity="gus")
    assert body["record"]["profileData"]["Name"] == "Gus"
