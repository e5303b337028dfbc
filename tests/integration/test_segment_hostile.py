"""Hostile and malformed input on the Segment tracking API (`/v1/*`): every refusal is a
4xx in Segment's error shape naming the problem, never a 5xx, and whatever is accepted
is stored whole. Complements test_segment_api.py, which drives the official libraries."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from conftest import Api, Kairos
from kairos.segment_messages import parse_time

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

OK = {"userId": "u", "event": "E"}


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


async def send(http: aiohttp.ClientSession, kairos: Kairos, path: str, body: Any = None, key: str | None = None,
               raw: bytes | None = None, headers: dict[str, str] | None = None,
               method: str = "POST") -> tuple[int, Any]:
    sent = {"Content-Type": "application/json", **({"Authorization": basic(key)} if key else {}), **(headers or {})}
    data = raw if raw is not None else json.dumps(body).encode()
    async with http.request(method, kairos.base_url + path, data=data, headers=sent) as resp:
        payload = await resp.read()
    try:
        return resp.status, json.loads(payload)
    except ValueError:
        return resp.status, payload  # not JSON: fails the shape check below


async def send_raw(kairos: Kairos, head: bytes, body: bytes) -> tuple[int, Any]:
    """Exact bytes on the wire, for headers aiohttp's client would not send."""
    url = urlsplit(kairos.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    await writer.wait_closed()
    status, payload = int(answer.split()[1]), answer.partition(b"\r\n\r\n")[2]
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def assert_refused(answer: tuple[int, Any], status: int, *fragments: str) -> None:
    code, body = answer
    assert code == status, answer
    assert isinstance(body, dict) and set(body) == {"success", "code", "message"}, answer
    assert body["success"] is False and isinstance(body["code"], str), answer
    for fragment in fragments:
        assert fragment in body["message"], answer


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


BAD_MESSAGES = [  # (path, body, words the error must contain)
    ("/v1/track", {**OK, "userId": ["a"]}, "userId"),
    ("/v1/track", {**OK, "userId": {"id": 1}}, "userId"),
    ("/v1/track", {**OK, "userId": True}, "userId"),
    ("/v1/track", {**OK, "anonymousId": 1.5, "userId": None, "messageId": 7}, "messageId"),
    ("/v1/track", {**OK, "event": 42}, "event"),
    ("/v1/track", {**OK, "event": "e" * 257}, "event"),
    ("/v1/track", {**OK, "event": "App Launched"}, "App Launched"),  # restricted, as on /1/upload (513)
    ("/v1/track", {**OK, "properties": [1, 2]}, "properties"),
    ("/v1/track", {**OK, "properties": "x"}, "properties"),
    ("/v1/track", {**OK, "properties": {"a": deep(17)}}, "properties"),
    ("/v1/track", {**OK, "timestamp": 1700000000}, "timestamp"),
    ("/v1/track", {**OK, "timestamp": "yesterday"}, "timestamp"),
    ("/v1/track", {**OK, "timestamp": "99999-01-01T00:00:00Z"}, "timestamp"),
    ("/v1/track", {**OK, "timestamp": "2024-01-01T00:00:00Z", "sentAt": ["now"]}, "sentAt"),
    ("/v1/track", {**OK, "context": ["ios"]}, "context"),
    ("/v1/identify", {"userId": "u", "context": {"traits": "vip"}}, "context.traits"),
    ("/v1/identify", {"userId": "u", "traits": [["email", "a@b.co"]]}, "traits"),
    ("/v1/alias", {"userId": "u", "previousId": False}, "previousId"),
    ("/v1/alias", {"userId": "u", "previousId": {"id": "p"}}, "previousId"),
    ("/v1/alias", {"userId": "u"}, "previousId"),
    ("/v1/group", {"userId": "u", "groupId": ["g"]}, "groupId"),
    ("/v1/page", {"userId": "u", "name": 5}, "name"),
    ("/v1/screen", {"userId": "u", "category": {"c": 1}}, "category"),
    ("/v1/track", {**OK, "type": "identify"}, "type"),
    ("/v1/track", [OK], "message"),
    ("/v1/track", "track", "message"),
    ("/v1/batch", {"batch": OK}, "batch"),
    ("/v1/batch", {"batch": [{**OK, "type": ["track"]}]}, "message 0"),
    ("/v1/batch", {"batch": []}, "at least one"),
    ("/v1/batch", {"batch": [{**OK, "type": "track"}], "context": "web"}, "context"),
    # Values the log (msgpack) cannot hold, and nesting that overflows a recursive walk.
    ("/v1/track", {**OK, "properties": {"n": 2**70}}, "properties"),
    ("/v1/track", {**OK, "properties": {"n": [-(2**63) - 1]}}, "properties"),
    ("/v1/identify", {"userId": "u", "traits": {"n": {"m": 2**64}}}, "traits"),
    ("/v1/track", {**OK, "properties": {"a": deep(600)}}, "properties"),
    ("/v1/identify", {"userId": "u", "context": {"a": deep(600)}}, "context"),
]


@pytest.mark.parametrize("path,body,words", BAD_MESSAGES, ids=[f"{i}{m[0][3:]}" for i, m in enumerate(BAD_MESSAGES)])
async def test_bad_message_is_400_naming_the_field(path: str, body: Any, words: str, make_api: Any, kairos: Kairos,
                                                   http: aiohttp.ClientSession) -> None:
    api: Api = await make_api()
    assert_refused(await send(http, kairos, path, body, api.creds.write_key), 400, words)
    if isinstance(body, dict) and "type" not in body and path != "/v1/batch":  # the same, inside a batch
        batch = {"batch": [{"type": path.rsplit("/", 1)[1], **body}]}
        assert_refused(await send(http, kairos, "/v1/batch", batch, api.creds.write_key), 400, "message 0", words)
    assert await api.count_events("E") == 0


BAD_BODIES = [
    (b'{"userId":"\xff","event":"E"}', "UTF-8"),
    (b'{"userId":"u","event":"E","properties":{"x":NaN}}', "malformed"),
    (b'{"userId":"u","event":"E","properties":{"x":Infinity}}', "malformed"),
    (b'{"userId":"u","event":"E","properties":{"x":1e999}}', "properties"),
    (b'{"userId":"u","event":"E"} {}', "malformed"),
    (b'\xef\xbb\xbf{"userId":"u","event":"E"}', "malformed"),
    (b'{"properties":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
    (b"", "malformed"),
]


@pytest.mark.parametrize("raw,words", BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
async def test_bad_json_is_400(raw: bytes, words: str, make_api: Any, kairos: Kairos,
                               http: aiohttp.ClientSession) -> None:
    api: Api = await make_api()
    assert_refused(await send(http, kairos, "/v1/track", raw=raw, key=api.creds.write_key), 400, words)


async def test_bad_credentials_are_401(make_api: Any, kairos: Kairos, http: aiohttp.ClientSession) -> None:
    api: Api = await make_api()
    key = api.creds.write_key
    for auth in ("Basic !!!notbase64", "Bearer " + key, "Basic " + base64.b64encode(b"\xff\xfe:").decode(),
                 basic("k" * 5000), basic("clé"), "Basic " + base64.b64encode(b":").decode(), "Basic"):
        assert_refused(await send(http, kairos, "/v1/track", OK, headers={"Authorization": auth}), 401)
    assert_refused(await send(http, kairos, "/v1/track", {**OK, "writeKey": ["k"]}), 401)
    answers = []  # header bytes outside ASCII (RFC 9110 obs-text)
    for header in ("Basic clé".encode(), b"Basic \xff\xfe", b"Basic " + base64.b64encode(key.encode()) + b"\xc3\xa9"):
        head = (b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: "
                + header + b"\r\n")
        answers.append(await send_raw(kairos, head, json.dumps(OK).encode()))
    for answer in answers:
        assert_refused(answer, 401)
    assert await api.count_events("E") == 0


async def test_routes_and_methods_answer_in_segment_shape(kairos: Kairos, http: aiohttp.ClientSession) -> None:
    assert_refused(await send(http, kairos, "/v1/track", method="GET", raw=b""), 405)
    assert_refused(await send(http, kairos, "/v1/launch", OK), 404)


async def test_gzip_edge_cases(make_api: Any, kairos: Kairos, http: aiohttp.ClientSession) -> None:
    api: Api = await make_api()
    key, gz = api.creds.write_key, {"Content-Encoding": "gzip"}
    body = json.dumps({**OK, "event": "Zipped"}).encode()
    assert_refused(await send(http, kairos, "/v1/track", raw=gzip.compress(body)[:-12], key=key, headers=gz), 400)
    bomb = gzip.compress(json.dumps({**OK, "properties": {"p": "x" * 3_000_000}}).encode())
    assert_refused(await send(http, kairos, "/v1/track", raw=bomb, key=key, headers=gz), 400, "larger than")
    # RFC 1952: a gzip stream may hold several members, read as their concatenation.
    half = len(body) // 2
    members = gzip.compress(body[:half]) + gzip.compress(body[half:])
    assert await send(http, kairos, "/v1/track", raw=members, key=key, headers=gz) == (200, {"success": True})
    assert await api.count_events("Zipped") == 1


async def test_size_limits_are_exact(make_api: Any, kairos: Kairos, http: aiohttp.ClientSession) -> None:
    api: Api = await make_api()
    key = api.creds.write_key

    def sized(size: int, **extra: Any) -> bytes:
        head = json.dumps({**OK, **extra, "properties": {"p": ""}}).encode()
        return head.replace(b'"p": ""', b'"p": "' + b"x" * (size - len(head)) + b'"')

    assert len(sized(32768)) == 32768
    assert await send(http, kairos, "/v1/track", raw=sized(32768), key=key) == (200, {"success": True})
    assert_refused(await send(http, kairos, "/v1/track", raw=sized(32769), key=key), 400, "32768")
    message = sized(32768, type="track").decode()
    count = 512000 // (len(message) + 1)
    exact = '{"batch":[' + ",".join([message] * count) + "]}"
    exact = exact[:-1] + " " * (512000 - len(exact)) + "}"
    assert len(exact.encode()) == 512000
    assert await send(http, kairos, "/v1/batch", raw=exact.encode(), key=key) == (200, {"success": True})
    assert_refused(await send(http, kairos, "/v1/batch", raw=exact.encode() + b" ", key=key), 400, "512000")
    assert await api.count_events("E") == 1 + count


async def test_many_tiny_messages_in_one_batch_are_all_stored(make_api: Any, kairos: Kairos,
                                                              http: aiohttp.ClientSession) -> None:
    api: Api = await make_api()
    tiny = [{"type": "track", "userId": str(i % 500), "event": "T"} for i in range(9_000)]
    assert len(json.dumps({"batch": tiny})) < 512_000
    assert await send(http, kairos, "/v1/batch", {"batch": tiny}, api.creds.write_key) == (200, {"success": True})
    assert await api.count_events("T") == 9_000


@pytest.mark.parametrize("previous,together", [("old", True), (1.5, False)])
async def test_alias_of_a_known_user_id_merges(previous: Any, together: bool, make_api: Any, kairos: Kairos,
                                               http: aiohttp.ClientSession) -> None:
    """Libraries batch, so track(old) and alias(old -> new) arrive together; a float userId is a user id too."""
    api: Api = await make_api()
    first = [{"type": "track", "userId": previous, "event": "Played"}]
    rest = [{"type": "alias", "previousId": previous, "userId": "new"},
            {"type": "track", "userId": "new", "event": "Played"}]
    for batch in [first + rest] if together else [first, rest]:
        assert await send(http, kairos, "/v1/batch", {"batch": batch}, api.creds.write_key) == (200, {"success": True})
    _, old = await api.profile(identity=str(previous))
    _, new = await api.profile(identity="new")
    assert old == new and new["record"]["events"]["Played"]["count"] == 2


async def test_later_message_context_wins_within_a_batch(make_api: Any, kairos: Kairos,
                                                        http: aiohttp.ClientSession) -> None:
    api: Api = await make_api()
    batch = [{"type": "track", "userId": "c", "event": "Seen", "context": {"app": {"version": "1.0"}}},
             {"type": "identify", "userId": "c", "traits": {"plan": "pro"}, "context": {"app": {"version": "2.0"}}}]
    assert await send(http, kairos, "/v1/batch", {"batch": batch}, api.creds.write_key) == (200, {"success": True})
    _, profile = await api.profile(identity="c")
    assert profile["record"]["profileData"]["context.app.version"] == "2.0"


@pytest.mark.parametrize("trait", [{"Email": "n/a"}, {"Phone": "0"}])
async def test_junk_identifying_trait_does_not_merge_strangers(trait: dict[str, str], make_api: Any, kairos: Kairos,
                                                               http: aiohttp.ClientSession) -> None:
    """`email` is checked before it becomes the identifying `Email`; `Email` and `Phone` as
    sent must be checked too (as /1/upload does, 515 / 516), or junk values merge users."""
    api: Api = await make_api()
    for user in ("stranger-1", "stranger-2"):
        answer = await send(http, kairos, "/v1/identify", {"userId": user, "traits": trait}, api.creds.write_key)
        assert answer[0] in (200, 400), answer
    status, first = await api.profile(identity="stranger-1")
    assert status == 404 or first != (await api.profile(identity="stranger-2"))[1]  # refused, or kept apart


async def test_retried_message_in_one_batch_counts_once(make_api: Any, kairos: Kairos,
                                                        http: aiohttp.ClientSession) -> None:
    api: Api = await make_api()
    message = {**OK, "type": "track", "event": "Once", "messageId": "m-1"}
    answer = await send(http, kairos, "/v1/batch", {"batch": [message, message]}, api.creds.write_key)
    assert answer == (200, {"success": True})
    assert await api.count_events("Once") == 1


def test_millisecond_timestamps_are_exact() -> None:  # int(float seconds * 1000) loses 1 ms in ~0.6% of times
    assert parse_time("2004-09-24T17:30:29.518Z", "timestamp") == 1096047029518
