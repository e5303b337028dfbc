"""The Segment tracking API, driven by the official `segment-analytics-python` and
`rudder-sdk-python` libraries pointed at the gateway, and checked through the CleverTap
read API of the same account."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from conftest import Api, Kairos

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def segment_client(host: str, write_key: str, **options: Any) -> SegmentClient:
    """Batching in a consumer thread, as apps run it (only that mode retries)."""
    errors: list[Exception] = []
    client = SegmentClient(write_key, host=host, max_retries=5, upload_interval=0.05,
                           on_error=lambda exc, batch: errors.append(exc), **options)
    client.errors = errors  # type: ignore[attr-defined]
    return client


def rudder_client(host: str, write_key: str) -> RudderClient:
    errors: list[Exception] = []
    client = RudderClient(write_key, host=host, sync_mode=True, gzip=True, max_retries=3,
                          on_error=lambda exc, batch: errors.append(exc))
    client.errors = errors  # type: ignore[attr-defined]
    return client


async def post(http: aiohttp.ClientSession, kairos: Kairos, path: str, body: Any, write_key: str | None = None,
               raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    sent_headers = {"Content-Type": "application/json", **(headers or {})}
    if write_key is not None:
        sent_headers["Authorization"] = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    data = raw if raw is not None else json.dumps(body).encode()
    async with http.post(kairos.base_url + path, data=data, headers=sent_headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_segment_library_anonymous_then_identified_user_is_one_profile(make_api: Any, kairos: Kairos) -> None:
    api: Api = await make_api()
    client = segment_client(kairos.base_url, api.creds.write_key)

    def journey() -> None:
        client.page(anonymous_id="anon-1", name="Pricing", properties={"path": "/pricing"})
        client.track(anonymous_id="anon-1", event="Trial Started", properties={"plan": "pro"})
        client.identify(user_id="user-1", anonymous_id="anon-1", traits={"email": "ada@example.com", "plan": "pro"})
        client.track(user_id="user-1", event="Order Completed", properties={"revenue": 42.5})
        client.screen(user_id="user-1", name="Home")
        client.group(user_id="user-1", group_id="acme", traits={"name": "Acme"})
        client.flush()

    await asyncio.to_thread(journey)
    assert client.errors == []  # type: ignore[attr-defined]

    status, by_user = await api.profile(identity="user-1")
    assert status == 200
    _, by_email = await api.profile(email="ADA@example.com")  # emails identify case-insensitively
    _, by_anonymous_id = await api.profile(anonymousId="anon-1")
    assert by_email == by_anonymous_id == by_user
    record = by_user["record"]
    counts = {name: e["count"] for name, e in record["events"].items()}
    assert counts == {"Page Viewed": 1, "Trial Started": 1, "Order Completed": 1, "Screen Viewed": 1}
    assert record["identities"]["anonymousId"] == ["anon-1"]
    props = record["profileData"]
    assert props["Email"] == "ada@example.com" and props["plan"] == "pro"
    assert props["groupId"] == "acme" and props["group.name"] == "Acme"
    assert props["context.library.name"] == "analytics-python"  # context kept on the profile
    assert await api.count_events("Trial Started") == 1


async def test_rudderstack_library_with_gzip_and_alias(make_api: Any, kairos: Kairos) -> None:
    api: Api = await make_api()
    client = rudder_client(kairos.base_url, api.creds.write_key)

    def calls() -> None:
        for i in range(5):
            client.track(anonymous_id="device-9", event="Song Played", properties={"i": i})
        client.track(user_id="old-id", event="Song Played")
        client.alias(previous_id="old-id", user_id="new-id")  # a known user id: merged
        client.identify(user_id="new-id", anonymous_id="device-9", traits={"name": "Lin"})
        client.flush()

    await asyncio.to_thread(calls)
    assert client.errors == []  # type: ignore[attr-defined]
    _, new = await api.profile(identity="new-id")
    _, old = await api.profile(identity="old-id")
    assert new == old
    assert new["record"]["events"]["Song Played"]["count"] == 6
    assert new["record"]["profileData"]["Name"] == "Lin"
    assert await api.count_events("Song Played") == 6


class FlakyProxy:
    """Forwards to the gateway; for the first `failures` requests it lets the gateway
    process the request, then tells the client 503 - an answer lost on the way back."""

    def __init__(self, upstream: str, failures: int) -> None:
        self.upstream = upstream
        self.failures = failures
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with aiohttp.ClientSession() as session:
            async with session.post(self.upstream + request.path, data=body, headers=headers) as resp:
                payload = await resp.read()
                status = resp.status
        if self.failures > 0:
            self.failures -= 1
            return web.json_response({"code": "unavailable", "message": "lost"}, status=503)
        return web.Response(body=payload, status=status, content_type="application/json")


@pytest_asyncio.fixture
async def flaky_proxy(kairos: Kairos) -> AsyncIterator[Callable[[int], Any]]:
    runners: list[web.AppRunner] = []

    async def start(failures: int) -> tuple[str, FlakyProxy]:
        proxy = FlakyProxy(kairos.base_url, failures)
        app = web.Application()
        app.router.add_post("/v1/{call}", proxy.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}", proxy

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_library_retries_after_lost_answers_never_duplicate(make_api: Any, flaky_proxy: Any) -> None:
    api: Api = await make_api()
    host, proxy = await flaky_proxy(2)
    client = segment_client(host, api.creds.write_key, gzip=True)

    def calls() -> None:
        client.track(anonymous_id="anon-r", event="Checkout", properties={"step": 1})
        client.flush()
        client.identify(user_id="user-r", anonymous_id="anon-r", traits={"plan": "free"})
        client.track(user_id="user-r", event="Checkout", properties={"step": 2})
        client.flush()
        client.join()

    await asyncio.to_thread(calls)
    assert proxy.requests >= 4 and proxy.failures == 0  # answers were lost, and retried
    assert client.errors == []  # type: ignore[attr-defined]
    assert await api.count_events("Checkout") == 2
    _, profile = await api.profile(identity="user-r")
    assert profile["record"]["events"]["Checkout"]["count"] == 2


async def test_errors_have_segment_shape(make_api: Any, kairos: Kairos, http: aiohttp.ClientSession) -> None:
    api: Api = await make_api()
    key = api.creds.write_key
    ok = {"userId": "u", "event": "E"}

    assert await post(http, kairos, "/v1/track", ok, key) == (200, {"success": True})
    assert await post(http, kairos, "/v1/track", {**ok, "writeKey": key}) == (200, {"success": True})
    status, body = await post(http, kairos, "/v1/track", ok, "wk_wrong")
    assert status == 401 and set(body) == {"success", "code", "message"} and body["code"] == "unauthorized"
    assert (await post(http, kairos, "/v1/track", ok))[0] == 401
    status, body = await post(http, kairos, "/v1/track", {"event": "E"}, key)
    assert status == 400 and "userId or anonymousId is required" in body["message"]
    status, body = await post(http, kairos, "/v1/track", None, key, raw=b"{nope")
    assert status == 400 and "malformed JSON" in body["message"]
    big = {**ok, "properties": {"blob": "x" * 33_000}}
    status, body = await post(http, kairos, "/v1/track", big, key)
    assert status == 400 and "larger than 32768" in body["message"]
    status, body = await post(http, kairos, "/v1/batch", {"batch": [{**big, "type": "track"}]}, key)
    assert status == 400 and "message 0 is" in body["message"]
    many = {"batch": [{**ok, "type": "track", "properties": {"p": "y" * 20_000}} for _ in range(30)]}
    status, body = await post(http, kairos, "/v1/batch", many, key)
    assert status == 400 and "larger than 512000" in body["message"]
    status, body = await post(http, kairos, "/v1/batch", {"batch": [{**ok, "type": "launch"}]}, key)
    assert status == 400 and "type must be one of" in body["message"]
    # A batch keeps its good messages and names the bad ones: the libraries drop a batch
    # answered 4xx whole, which would lose the good ones.
    mixed = {"batch": [{**ok, "type": "track", "event": "Kept"}, 5, {"type": "track", "event": "Kept"},
                       {**ok, "type": "track", "event": "Kept", "properties": {"n": 2**70}}]}
    status, body = await post(http, kairos, "/v1/batch", mixed, key)
    assert status == 200 and body["success"] is True
    assert [r["index"] for r in body["rejected"]] == [1, 2, 3]
    assert "userId or anonymousId is required" in body["rejected"][1]["message"]
    assert await api.count_events("Kept") == 1
    status, body = await post(http, kairos, "/v1/track", None, key, raw=b"\x1f\x8b not gzip",
                              headers={"Content-Encoding": "gzip"})
    assert status == 400 and body["code"] == "invalid_request"
    # A gzip body is read as JSON, and a bad batch writes nothing.
    zipped = gzip.compress(json.dumps({"batch": [{**ok, "type": "track", "event": "Zipped"}]}).encode())
    assert await post(http, kairos, "/v1/batch", None, key, raw=zipped, headers={"Content-Encoding": "gzip"}) == (
        200, {"success": True})
    assert await api.count_events("Zipped") == 1
    assert await api.count_events("E") == 2


async def test_a_write_key_reaches_only_its_own_account(make_api: Any, kairos: Kairos,
                                                        http: aiohttp.ClientSession) -> None:
    first: Api = await make_api()
    second: Api = await make_api()
    await post(http, kairos, "/v1/track", {"userId": "shared", "event": "Mine"}, first.creds.write_key)
    assert await first.count_events("Mine") == 1
    assert await second.count_events("Mine") == 0
    assert (await second.profile(identity="shared"))[0] == 404
