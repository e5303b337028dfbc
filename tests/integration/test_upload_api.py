"""CleverTap upload and read API against the real runtime (Ray actors + Redis)."""

from __future__ import annotations

import asyncio
import calendar
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_upload_is_visible_in_profile_at_once(make_api: Any) -> None:
    api = await make_api()
    status, body = await api.upload([
        event("u-1", "Product Viewed", ts=1_790_000_000, Price=59.99, Category="Watches"),
        event("u-1", "Product Viewed", ts=1_790_000_100),
        event("u-1", "Charged", ts=1_790_000_200, Amount=120),
        {"identity": "u-1", "type": "profile", "ts": 1_790_000_300,
         "profileData": {"Name": "Ann", "Email": "ann@example.com", "Phone": "+14155550100", "Age": 31}},
    ])
    assert (status, body) == (200, {"status": "success", "processed": 4, "unprocessed": []})

    status, body = await api.profile(identity="u-1")
    assert status == 200 and body["status"] == "success"
    record = body["record"]
    assert record["identity"] == "u-1"
    assert record["profileData"] == {"Name": "Ann", "Email": "ann@example.com", "Phone": "+14155550100", "Age": 31}
    assert record["events"] == {
        "Product Viewed": {"count": 2, "first_seen": 1_790_000_000, "last_seen": 1_790_000_100},
        "Charged": {"count": 1, "first_seen": 1_790_000_200, "last_seen": 1_790_000_200},
    }
    assert (record["first_seen"], record["last_seen"]) == (1_790_000_000, 1_790_000_300)

    status, by_email = await api.profile(email="ann@example.com")
    assert status == 200 and by_email["record"]["identity"] == "u-1"


async def test_profile_properties_latest_write_wins(make_api: Any) -> None:
    api = await make_api()
    await api.upload([{"objectId": "dev-9", "type": "profile", "profileData": {"Plan": "free", "Score": 1}}])
    await api.upload([{"objectId": "dev-9", "type": "profile", "profileData": {"Plan": "pro"}}])
    status, body = await api.profile(objectId="dev-9")
    assert status == 200
    assert body["record"]["profileData"] == {"Plan": "pro", "Score": 1}


async def test_unknown_profile_is_404(make_api: Any) -> None:
    api = await make_api()
    status, body = await api.profile(identity="nobody")
    assert (status, body) == (404, {"status": "fail", "error": "Profile not found", "code": 404})


BAD_RECORDS = [
    (509, {"identity": "a", "type": "event", "evtData": {}}),
    (512, {"identity": "a", "type": "event", "evtName": "E", "evtData": "not an object"}),
    (512, {"identity": "a", "type": "event", "evtName": "E", "evtData": {"k" * 121: 1}}),
    (512, {"identity": "a", "type": "event", "evtName": "E", "evtData": {"k": "x" * 513}}),
    (513, {"identity": "a", "type": "event", "evtName": "Notification Clicked"}),
    (514, {"identity": "a", "type": "profile", "profileData": {"Gender": "X"}}),
    (515, {"identity": "a", "type": "profile", "profileData": {"Email": "not-an-email"}}),
    (516, {"identity": "a", "type": "profile", "profileData": {"Phone": "4155550100"}}),
    (517, {"identity": "a", "type": "profile", "profileData": {"Employed": "maybe"}}),
    (518, {"identity": "a", "type": "profile", "profileData": {"Education": "Kindergarten"}}),
    (519, {"identity": "a", "type": "profile", "profileData": {"Married": "sometimes"}}),
    (520, {"identity": "a", "type": "profile", "profileData": {"Age": "thirty"}}),
    (522, {"identity": "a", "type": "event", "evtName": "E", "evtData": {f"p{i}": i for i in range(257)}}),
    (523, {"type": "event", "evtName": "E", "evtData": {}}),
    (524, {"identity": "a", "type": "page", "evtName": "E"}),
    (525, {"identity": "a", "type": "event", "evtName": "E", "ts": "yesterday"}),
    (525, {"identity": "a", "type": "event", "evtName": "E", "ts": 1_790_000_000_000_000}),
    (526, {"objectId": {"nested": True}, "type": "event", "evtName": "E"}),
]


@pytest.mark.parametrize(("code", "record"), BAD_RECORDS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(BAD_RECORDS)])
async def test_each_bad_record_gets_its_clevertap_code(make_api: Any, code: int, record: dict[str, Any]) -> None:
    api = await make_api()
    good = event("fine-user", "Good Event")
    status, body = await api.upload([good, record])
    assert status == 200
    assert body["status"] == "partial" and body["processed"] == 1
    [rejected] = body["unprocessed"]
    assert rejected["status"] == "fail" and rejected["code"] == code and rejected["error"]
    assert rejected["record"] == record
    # The good record landed; the bad one did not.
    assert await api.count_events("Good Event") == 1
    assert await api.count_events("E") == 0


async def test_all_bad_is_fail_and_dry_run_writes_nothing(make_api: Any) -> None:
    api = await make_api()
    status, body = await api.upload([{"type": "event", "evtName": "E"}])
    assert status == 200 and body["status"] == "fail" and body["processed"] == 0

    status, body = await api.upload([event("dry", "Dry Event")], query="?dryRun=1")
    assert (status, body["status"], body["processed"]) == (200, "success", 1)
    assert await api.count_events("Dry Event") == 0
    assert (await api.profile(identity="dry"))[0] == 404


async def test_request_level_errors_are_4xx_with_clevertap_shape(make_api: Any, kairos: Any) -> None:
    api = await make_api()
    status, body = await api.request("POST", "/1/upload", raw=b'{"d": [')
    assert status == 400 and body["status"] == "fail" and body["code"] == 400 and "malformed JSON" in body["error"]

    status, body = await api.request("POST", "/1/upload", raw=b'{"records": []}')
    assert status == 400 and body["code"] == 400

    status, body = await api.upload([event(f"u{i}") for i in range(1001)])
    assert status == 400 and "at most 1000" in body["error"]

    too_big = b'{"d":[' + b",".join([b'{"identity":"x","type":"event","evtName":"E"}'] * 60_000) + b"]}"
    assert len(too_big) > kairos.settings.max_body_bytes
    status, body = await api.request("POST", "/1/upload", raw=too_big)
    assert status == 413 and body == {"status": "fail", "error": body["error"], "code": 413}

    status, body = await api.request("POST", "/1/events.json", {"from": 20260101, "to": 20260102})
    assert status == 400 and "event_name" in body["error"]
    status, body = await api.request("POST", "/1/events.json", {"event_name": "E", "from": "2026-01-01", "to": 1})
    assert status == 400 and "YYYYMMDD" in body["error"]
    status, body = await api.request("GET", "/1/events.json?cursor=garbage")
    assert status == 400 and body["error"] == "cursor is not valid"


async def test_large_integers_are_rejected_per_record_not_500(make_api: Any) -> None:
    api = await make_api()
    status, body = await api.upload([event("big", "Big", n=2**64), event("big", "Big", n=2**63)])
    assert status == 200 and body["processed"] == 1
    assert [r["code"] for r in body["unprocessed"]] == [512]


async def test_message_id_makes_a_retried_upload_count_once(make_api: Any) -> None:
    api = await make_api()
    records = [{**event(f"r{i}", "Retried"), "messageId": f"m-{i}"} for i in range(50)]
    for _ in range(3):
        status, body = await api.upload(records)
        assert status == 200 and body["processed"] == 50
    assert await api.count_events("Retried") == 50


async def test_event_and_profile_downloads_page_through_everything_exactly(make_api: Any) -> None:
    api = await make_api()
    day = 86_400
    base = calendar.timegm((2026, 9, 22, 0, 0, 0))
    records = [event(f"user-{i % 37}", "Charged", ts=base + (i % 5) * day + i, Amount=i) for i in range(400)]
    records += [event("other", "Searched", ts=base + 10)]
    assert (await api.upload(records))[1]["processed"] == 401

    downloaded = await api.download("events", "Charged", batch_size=23, frm=20260922, to=20260924)
    expected = sorted(r["evtData"]["Amount"] for r in records if r["evtName"] == "Charged" and r["ts"] < base + 3 * day)
    assert sorted(r["event_props"]["Amount"] for r in downloaded) == expected
    assert all(set(r["profile"]) == {"identity"} for r in downloaded)
    assert await api.count_events("Charged", 20260922, 20260924) == len(expected)
    assert await api.count_events("Charged", 20260922, 20260930) == 400

    profiles = await api.download("profiles", "Charged", batch_size=5, frm=20260922, to=20260930)
    assert sorted(p["identity"] for p in profiles) == sorted(f"user-{i}" for i in range(37))
    status, body = await api.request("POST", "/1/counts/profiles.json", {"event_name": "Charged", "from": 20260922, "to": 20260930})
    assert (status, body["count"]) == (200, 37)


async def test_concurrent_uploads_from_many_clients_count_exactly(make_api: Any) -> None:
    api = await make_api()

    async def client(n: int) -> int:
        done = 0
        for batch in range(5):
            records = [event(f"c{n}-{i}", "Burst", k=batch) for i in range(200)]
            while True:
                status, body = await api.upload(records)
                if status != 429:
                    break
                await asyncio.sleep(0.05)
            assert status == 200, body
            done += body["processed"]
        return done

    acknowledged = sum(await asyncio.gather(*(client(n) for n in range(12))))
    assert acknowledged == 12 * 5 * 200
    assert await api.count_events("Burst") == acknowledged
    profiles = await api.download("profiles", "Burst", batch_size=5000)
    assert len(profiles) == 12 * 200
    assert all(p["events"]["Burst"]["count"] == 5 for p in profiles)


async def test_hostile_bodies_get_4xx_never_500(make_api: Any) -> None:
    api = await make_api()
    # A list where CleverTap expects a string: a per-record code, not a crash.
    status, body = await api.upload([{"identity": "h", "type": "profile", "profileData": {"Gender": ["M"]}},
                                     {"identity": "h", "type": "profile", "profileData": {"Married": {"y": 1}}}])
    assert status == 200 and [r["code"] for r in body["unprocessed"]] == [514, 519]

    deep = b'{"d":[' + b"[" * 5000 + b"]" * 5000 + b"]}"
    status, body = await api.request("POST", "/1/upload", raw=deep)
    assert status == 400 and body["code"] == 400
    status, body = await api.request("POST", "/1/counts/events.json", raw=b'{"event_name":' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert status == 400 and body["code"] == 400

    # A body that claims gzip but is not. The server answers 400 and drops the connection
    # (the stream is unusable), so this request gets a connection of its own.
    not_gzip = {**api.headers, "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        async with fresh.post(api.base + "/1/upload", data=b'{"d":[]}', headers=not_gzip) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == 400

    status, body = await api.request("POST", "/1/events.json?batch_size=%C2%B2", {"event_name": "E", "from": 20260101, "to": 20260102})
    assert status == 400 and "batch_size" in body["error"]


async def test_forged_cursors_are_refused(make_api: Any) -> None:
    from gateway.clevertap import ExportCursor
    from kairos.segments.downloads import ExportQuery

    api = await make_api()
    account = api.creds.account_id
    query = ExportQuery("E", 0, 2**40)
    for forged in (
        ExportCursor(account, "events", query, 10**7, 0, 0),  # page size past the limit
        ExportCursor(account, "events", query, 10, -1, 0),  # no such partition
        ExportCursor(account, "events", query, 10, 0, -5),  # negative position
        ExportCursor(account, "events", query, 10, 10_000, 0),
        # Filters the shards would choke on: cursors are input, their queries are checked.
        ExportCursor(account, "events", ExportQuery("E", 0, 2**40, [{"property": "a", "op": "zap"}]), 10, 0, 0),
        ExportCursor(account, "events", ExportQuery("E", 0, 2**40, [], {"did": 5}), 10, 0, 0),
    ):
        status, body = await api.request("GET", f"/1/events.json?cursor={forged.encode()}")
        assert (status, body["error"]) == (400, "cursor is not valid")


async def test_more_hostile_input_gets_a_record_code_or_4xx(make_api: Any) -> None:
    api = await make_api()
    # A value nested far deeper than any real property: refused, so that no read of the
    # profile later walks it (it crashed a shard's C stack before).
    deep: Any = 1
    for _ in range(900):
        deep = [deep]
    status, body = await api.upload([
        {"identity": "deep", "type": "profile", "profileData": {"a": deep}},
        {"identity": "deep", "type": "event", "evtName": "Deep", "evtData": {"a": deep}},
        {"identity": "ok", "type": "event", "evtName": "Deep", "evtData": {"a": [[[1]]]}},
    ])
    assert status == 200 and body["processed"] == 1
    assert [r["code"] for r in body["unprocessed"]] == [512, 512]
    assert (await api.profile(identity="deep"))[0] == 404

    status, body = await api.request("POST", "/1/upload", raw=b'{"d":[{"identity":"\xff","type":"event","evtName":"E"}]}')
    assert status == 400 and "UTF-8" in body["error"]
    status, body = await api.request("POST", "/1/counts/events.json", raw=b'{"event_name":"\xff","from":20260101,"to":20260102}')
    assert status == 400 and "UTF-8" in body["error"]

    status, body = await api.request("POST", "/1/upload", {"d": [event("x")]},
                                     headers={**api.headers, "X-CleverTap-Passcode": "p\xe4ss"})
    assert (status, body["code"]) == (401, 401)

    status, body = await api.request("POST", "/1/events.json?batch_size=" + "0" * 4301 + "1",
                                     {"event_name": "E", "from": 20260101, "to": 20260102})
    assert status == 400 and "batch_size" in body["error"]
    status, body = await api.request("POST", "/1/events.json", {"event_name": "E", "from": 202611, "to": 202612})
    assert status == 400 and "YYYYMMDD" in body["error"]

    status, body = await api.upload([
        {"identity": "nl", "type": "profile", "profileData": {"Email": "a@b.co\n"}},
        {"identity": 2**70, "type": "event", "evtName": "E"},
    ])
    assert status == 200 and [r["code"] for r in body["unprocessed"]] == [515, 523]
