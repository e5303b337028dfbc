"""Segments over HTTP with real Ray and Redis: counts and member pages equal the
reference's answers, saved segments, errors that name their path, and isolation."""

from __future__ import annotations

import random
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kairos.segments.definition import parse_segment
from tests.integration.conftest import event
from tests.unit.segment_reference import RefAccount

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AS_OF = 1_790_000_000  # epoch seconds
DAY_S = 86_400


def history(seed: int) -> tuple[list[dict[str, Any]], RefAccount]:
    """Random uploads for 40 users and the same history in the reference."""
    rng = random.Random(seed)
    ref, records = RefAccount(), []
    for i in range(600):
        user = f"seg-{rng.randrange(40)}"
        ts = AS_OF - rng.randrange(30 * DAY_S)
        if i % 10 == 0:
            props = {"City": rng.choice(["Paris", "Pune", "Lyon"]), "Age": rng.randrange(18, 70)}
            records.append({"identity": user, "type": "profile", "ts": ts, "profileData": props})
            ref.profile(f"identity:{user}", ts * 1000, props)
        else:
            name = rng.choice(["Charged", "Added To Cart", "Product Viewed"])
            props = {"Amount": rng.randrange(1, 300), "Category": rng.choice(["Shoes", "Bags"])}
            records.append(event(user, name, ts, **props))
            ref.event(f"identity:{user}", name, ts * 1000, props)
    return records, ref


QUERIES = [
    {"profile": "City", "op": "eq", "value": "Paris"},
    {"did": "Charged", "within": "7d", "count": {"op": "gte", "value": 2}},
    {"did": "Charged", "where": [{"property": "Category", "op": "eq", "value": "Shoes"}],
     "sum": "Amount", "op": "gte", "value": 400, "within": "30d"},
    {"all": [{"profile": "Age", "op": "lt", "value": 40}, {"did_not": "Product Viewed", "within": "5d"}]},
    {"sequence": ["Added To Cart", "Charged"], "gap": "3d"},
    {"first_time": "Product Viewed", "within": {"from": "2026-09-10", "to": "2026-09-15"}},
]


async def loaded(make_api: Any, seed: int) -> tuple[Any, RefAccount]:
    api = await make_api()
    records, ref = history(seed)
    for start in range(0, len(records), 200):
        status, body = await api.upload(records[start : start + 200])
        assert (status, body["status"]) == (200, "success"), body
    return api, ref


async def test_counts_and_member_pages_equal_the_reference(make_api: Any) -> None:
    api, ref = await loaded(make_api, 1)
    for definition in QUERIES:
        for tz in ("UTC", "Asia/Kolkata"):
            expected = {k.split(":", 1)[1] for k in ref.members(parse_segment(definition), AS_OF * 1000, ZoneInfo(tz))}
            status, body = await api.request("POST", "/api/segments/count", {"segment": definition, "tz": tz,
                                                                          "as_of": AS_OF})
            assert status == 200, body
            assert body == {"count": len(expected), "as_of": AS_OF * 1000}, definition
            query: dict[str, Any] = {"segment": definition, "tz": tz, "as_of": AS_OF, "limit": 7}
            seen: list[str] = []
            while True:
                status, page = await api.request("POST", "/api/segments/members", query)
                assert status == 200, page
                assert len(page["members"]) <= 7
                seen.extend(m["identity"] for m in page["members"])
                if page["next_cursor"] is None:
                    break
                query["cursor"] = page["next_cursor"]
            assert sorted(seen) == sorted(expected), definition


async def test_a_cursor_only_serves_its_own_query(make_api: Any) -> None:
    api, _ = await loaded(make_api, 2)
    query = {"segment": {"did": "Charged"}, "limit": 3}
    status, page = await api.request("POST", "/api/segments/members", query)
    assert status == 200 and page["next_cursor"]
    other = {"segment": {"did": "Product Viewed"}, "limit": 3, "cursor": page["next_cursor"]}
    status, body = await api.request("POST", "/api/segments/members", other)
    assert (status, body["path"]) == (400, "cursor"), body
    status, body = await api.request("POST", "/api/segments/members", {**query, "cursor": "not-a-cursor"})
    assert (status, body["path"]) == (400, "cursor"), body


async def test_saved_segments_round_trip_and_count_by_name(make_api: Any) -> None:
    api, ref = await loaded(make_api, 3)
    definition = {"did": "Charged", "within": "7d"}
    status, saved = await api.request("PUT", "/api/segments/Recent buyers", {"definition": definition, "live": True,
                                                                             "description": "bought this week"})
    assert status == 200, saved
    assert (saved["name"], saved["definition"], saved["live"], saved["version"]) == ("Recent buyers", definition, True, 1)
    status, again = await api.request("PUT", "/api/segments/Recent buyers", {"definition": definition})
    assert (again["version"], again["live"], again["created_ms"]) == (2, False, saved["created_ms"])
    status, listed = await api.request("GET", "/api/segments")
    assert [s["name"] for s in listed["segments"]] == ["Recent buyers"]
    status, body = await api.request("POST", "/api/segments/count", {"name": "Recent buyers", "as_of": AS_OF})
    assert status == 200
    assert body["count"] == len(ref.members(parse_segment(definition), AS_OF * 1000, ZoneInfo("UTC")))
    other = await make_api()
    status, body = await other.request("GET", "/api/segments/Recent buyers")
    assert status == 404  # another account's segment does not exist for this one
    status, body = await other.request("POST", "/api/segments/count", {"segment": {"did": "Charged"}})
    assert body["count"] == 0  # and it sees none of this account's users
    status, _ = await api.request("DELETE", "/api/segments/Recent buyers")
    assert status == 200
    status, body = await api.request("GET", "/api/segments/Recent buyers")
    assert status == 404 and body["status"] == "fail"


@pytest.mark.parametrize("method, path, body, status, at", [
    ("POST", "/api/segments/count", {"segment": {"all": [{"did": "A", "within": "7x"}]}}, 400, "segment.all[0].within"),
    ("POST", "/api/segments/count", {"segment": {"did": "A"}, "tz": "Mars/Olympus"}, 400, "tz"),
    ("POST", "/api/segments/count", {"segment": {"did": "A"}, "as_of": "yesterday"}, 400, "as_of"),
    ("POST", "/api/segments/count", {"segment": {"did": "A"}, "name": "x"}, 400, "segment"),
    ("POST", "/api/segments/count", {"segment": {"did": "A"}, "extra": 1}, 400, "extra"),
    ("POST", "/api/segments/count", {"name": "nobody saved this"}, 404, "name"),
    ("POST", "/api/segments/members", {"segment": {"did": "A"}, "limit": 0}, 400, "limit"),
    ("PUT", "/api/segments/ok", {"definition": {"profile": "Age", "op": "gt", "value": "x"}}, 400, "definition.value"),
    ("PUT", "/api/segments/ok", {"definition": {"did": "A"}, "live": "yes"}, 400, "live"),
    ("PUT", "/api/segments/ok", {"live": True}, 400, "definition"),
    ("PUT", "/api/segments/%20bad", {"definition": {"did": "A"}}, 400, "name"),
])
async def test_bad_requests_name_what_is_wrong(make_api: Any, method: str, path: str, body: Any, status: int,
                                               at: str) -> None:
    api = await make_api()
    got, answer = await api.request(method, path, body)
    assert (got, answer["status"], answer["code"], answer["path"]) == (status, "fail", status, at), answer


async def test_malformed_json_and_missing_credentials(make_api: Any) -> None:
    api = await make_api()
    status, body = await api.request("POST", "/api/segments/count", raw=b"{nope")
    assert status == 400 and "malformed JSON" in body["error"]
    status, body = await api.request("POST", "/api/segments/count", {"segment": {"did": "A"}}, headers={})
    assert status == 401 and body["status"] == "fail"
    status, document = await api.request("GET", "/api/openapi.json", headers={})
    assert status == 200 and document["openapi"].startswith("3.")


async def test_clevertap_query_bodies_filter_on_the_segment_engine(make_api: Any) -> None:
    """/1/counts and /1/*.json downloads with event_properties and profile_fields."""
    api, ref = await loaded(make_api, 6)
    body = {"event_name": "Charged", "from": 20260801, "to": 20260922,
            "event_properties": [{"name": "Category", "operator": "equals", "value": "Shoes"},
                                 {"name": "Amount", "operator": "greater_than", "value": 100}],
            "common_profile_properties": {"profile_fields": [{"name": "City", "operator": "equals",
                                                              "value": ["Paris", "Lyon"]}]}}
    city = {"profile": "City", "op": "in", "value": ["Paris", "Lyon"]}
    in_city = ref.members(parse_segment(city), 0, ZoneInfo("UTC"))
    buyers = {k: u for k, u in ref.users.items() if k in in_city}
    matching = {k: [e for e in u.events if e.name == "Charged" and e.props["Category"] == "Shoes"
                    and e.props["Amount"] > 100] for k, u in buyers.items()}
    expected_events = sum(len(v) for v in matching.values())
    expected_users = sorted(k.split(":", 1)[1] for k, v in matching.items() if v)
    assert expected_events and expected_users
    assert await count(api, "events", body) == expected_events
    assert await count(api, "profiles", body) == len(expected_users)
    events = await download(api, "events", body)
    assert len(events) == expected_events
    assert all(e["event_props"]["Category"] == "Shoes" and e["event_props"]["Amount"] > 100 for e in events)
    profiles = await download(api, "profiles", body)
    assert sorted(p["identity"] for p in profiles) == expected_users
    bad = {**body, "event_properties": [{"name": "Amount", "operator": "greater", "value": 1}]}
    status, answer = await api.request("POST", "/1/counts/events.json", bad)
    assert status == 400 and "event_properties[0].operator" in answer["error"], answer
    bad = {**body, "common_profile_properties": {"profile_fields": [{"name": "Age", "operator": "less_than",
                                                                     "value": "old"}]}}
    status, answer = await api.request("POST", "/1/counts/profiles.json", bad)
    assert status == 400 and "profile_fields[0].value" in answer["error"], answer


async def count(api: Any, kind: str, body: dict[str, Any]) -> int:
    status, answer = await api.request("POST", f"/1/counts/{kind}.json", body)
    assert status == 200, answer
    return int(answer["count"])


async def download(api: Any, kind: str, body: dict[str, Any]) -> list[Any]:
    status, answer = await api.request("POST", f"/1/{kind}.json?batch_size=5", body)
    assert status == 200, answer
    records, cursor = [], answer["cursor"]
    while cursor:
        status, page = await api.request("GET", f"/1/{kind}.json?cursor={cursor}")
        assert status == 200, page
        records.extend(page["records"])
        cursor = page.get("next_cursor")
    return records


@pytest.mark.parametrize("method, path, body, status, at", [
    ("GET", "/api/segments/s/signals?after=0-0%0A", None, 400, "after"),
    ("GET", "/api/segments/s/signals?after=%D9%A3-0", None, 400, "after"),
    ("GET", "/api/segments/s/signals?after=18446744073709551615-18446744073709551615", None, 400, "after"),
    ("POST", "/api/query/retention", {"first": "A", "return": "A", "from": "9998-06-01", "to": "9998-12-31",
                                      "by": "week", "periods": 120}, 400, "to"),
    ("POST", "/api/query/retention", {"first": "A", "return": "A", "from": "4800d", "to": "now", "by": "day",
                                      "periods": 120}, 400, "periods"),
    ("POST", "/api/segments/count", {"segment": {"did": "A"}, "tz": "localtime"}, 400, "tz"),
    ("PUT", "/api/segments/Buyers%20", {"definition": {"did": "A"}}, 400, "name"),
])
async def test_hostile_requests_get_a_4xx(make_api: Any, method: str, path: str, body: Any, status: int,
                                          at: str) -> None:
    api = await make_api()
    await api.request("PUT", "/api/segments/s", {"definition": {"did": "A"}, "live": True})
    got, answer = await api.request(method, path, body)
    assert (got, answer.get("path")) == (status, at), answer


async def test_invalid_utf8_and_oversized_filters_get_400(make_api: Any) -> None:
    api = await make_api()
    status, body = await api.request("POST", "/api/segments/count", raw=b'{"a":"\xff"}')
    assert status == 400 and "UTF-8" in body["error"]
    fields = [{"name": "City", "operator": "equals", "value": "Pune"}] * 257
    query = {"event_name": "E", "from": 20260101, "to": 20260102,
             "common_profile_properties": {"profile_fields": fields}}
    for path in ("/1/counts/events.json", "/1/counts/profiles.json", "/1/events.json"):
        status, body = await api.request("POST", path, query)
        assert status == 400 and "256 conditions" in body["error"], (path, body)
    many = {"event_name": "E", "from": 20260101, "to": 20260102, "event_properties": [
        {"name": "Category", "operator": "in", "value": [f"value-{i:04d}-{i * 7919 % 10007}" for i in range(1000)]}]}
    status, body = await api.request("POST", "/1/events.json", many)
    assert status == 400 and "too large for a download cursor" in body["error"], body
