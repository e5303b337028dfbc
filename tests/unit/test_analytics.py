"""Trends, funnels, retention and RFM: partials per partition combined as the
coordinator does, against the row-by-row reference, on random accounts with merges
across partitions, in several time zones. Equal, not close."""

from __future__ import annotations

import random
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest

from kairos.analytics import funnels, retention, rfm, trends
from kairos.analytics.common import Scope
from kairos.analytics.queries import parse_funnel, parse_retention, parse_rfm, parse_trend
from kairos.segments.definition import SegmentError
from kairos.segments.evaluate import StoreQuery
from kairos.store.account_store import AccountStore
from tests.unit import analytics_reference as reference
from tests.unit.random_accounts import EVENTS, NOW, ZONES, build_partitioned

pytestmark = pytest.mark.timeout(120)

RANGES = [("2026-08-20", "2026-09-20"), ("20d", "2d"), (1_788_000_000, "2026-09-21T00:00:00+05:30")]
SEGMENTS = [None, {"profile": "City", "op": "in", "value": ["Paris", "Lyon"]}, {"did": "Searched", "within": "10d"}]


def partials(stores: list[AccountStore], partial: Callable[..., Any], query: Any, tz: str) -> list[Any]:
    zone = ZoneInfo(tz)
    return [partial(Scope(StoreQuery(s, NOW, zone), query.segment), query, NOW, zone)
            for s in stores if s.user_count]


def where(rng: random.Random) -> list[dict[str, Any]]:
    return rng.choice([[], [], [{"property": "Category", "op": "in", "value": ["Shoes", "Bags"]}],
                       [{"property": "Amount", "op": "gte", "value": 100}]])


def common(rng: random.Random) -> dict[str, Any]:
    start, end = rng.choice(RANGES)
    body: dict[str, Any] = {"from": start, "to": end}
    segment = rng.choice(SEGMENTS)
    if segment is not None:
        body["segment"] = segment
    return body


def key_of(value: Any) -> Any:
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", float(value))
    return ("s", value) if isinstance(value, str) else ("null", None)


@pytest.mark.parametrize("seed", [21, 22])
def test_trends_equal_the_reference(seed: int) -> None:
    stores, ref = build_partitioned(seed, 3)
    rng = random.Random(seed)
    for _ in range(60):
        body = {**common(rng), "event": rng.choice(EVENTS), "where": where(rng),
                "measure": rng.choice(["count", "users", {"sum": "Amount"}]),
                "by": rng.choice(["hour", "day", "week", {"property": "Category"}, {"property": "Amount"}])}
        tz = rng.choice(ZONES)
        query = parse_trend(body)
        got = trends.combine_trend(partials(stores, trends.trend_partial, query, tz), query, NOW, ZoneInfo(tz))
        expected = reference.trend(ref, query, NOW, ZoneInfo(tz))
        if query.by == "property":
            assert {key_of(r["key"]): r["value"] for r in got} == expected, body
            assert [r["value"] for r in got] == sorted((r["value"] for r in got), reverse=True)
        else:
            assert {r["key"]: r["value"] for r in got if r["value"]} == {k: v for k, v in expected.items() if v}, body
            labels = [r["key"] for r in got]
            assert len(set(labels)) == len(labels) and set(expected) <= set(labels)


@pytest.mark.parametrize("seed", [23, 24])
def test_funnels_equal_the_reference(seed: int) -> None:
    stores, ref = build_partitioned(seed, 3)
    rng = random.Random(seed)
    for _ in range(60):
        steps = [rng.choice(EVENTS) if rng.random() < 0.7 else {"event": rng.choice(EVENTS), "where": where(rng)}
                 for _ in range(rng.randrange(2, 5))]
        body = {**common(rng), "steps": steps, "window": rng.choice(["1h", "1d", "7d", "30d"])}
        tz = rng.choice(ZONES)
        query = parse_funnel(body)
        got = funnels.combine_funnel(partials(stores, funnels.funnel_partial, query, tz), query)
        expected = reference.funnel(ref, query, NOW, ZoneInfo(tz))
        assert [(s["users"], s["median_seconds_from_previous"], s["median_seconds_from_entry"]) for s in got] \
            == expected, body
        first = got[0]["users"]
        for previous, step in zip(got, got[1:]):
            assert step["conversion_from_previous"] == (step["users"] / previous["users"] if previous["users"] else 0.0)
            assert step["conversion_from_first"] == (step["users"] / first if first else 0.0)


@pytest.mark.parametrize("seed", [25, 26])
def test_retention_equals_the_reference(seed: int) -> None:
    stores, ref = build_partitioned(seed, 3)
    rng = random.Random(seed)
    for _ in range(40):
        by = rng.choice(["day", "week"])
        body = {**common(rng), "first": rng.choice(EVENTS), "by": by, "periods": rng.randrange(1, 15),
                "return": rng.choice(EVENTS) if rng.random() < 0.7 else {"event": rng.choice(EVENTS), "where": where(rng)}}
        tz = rng.choice(ZONES)
        query = parse_retention(body)
        got = retention.combine_retention(partials(stores, retention.retention_partial, query, tz), query, NOW,
                                          ZoneInfo(tz))
        expected = reference.retention(ref, query, NOW, ZoneInfo(tz))
        assert {c["cohort"]: (c["users"], c["retained"]) for c in got["cohorts"] if c["users"]} == expected, body
        assert got["users"] == sum(size for size, _ in expected.values())


@pytest.mark.parametrize("seed", [27, 28])
def test_rfm_equals_the_reference(seed: int) -> None:
    stores, ref = build_partitioned(seed, 3, users=150, records=4000)
    rng = random.Random(seed)
    for _ in range(30):
        body = {**common(rng), "event": rng.choice(EVENTS), "where": where(rng), "monetary": "Amount"}
        tz = rng.choice(ZONES)
        query = parse_rfm(body)
        got = rfm.combine_rfm(partials(stores, rfm.rfm_partial, query, tz))
        expected = reference.rfm(ref, query, NOW, ZoneInfo(tz))
        assert {s["segment"]: (s["users"], s["monetary_sum"]) for s in got["segments"] if s["users"]} == expected, body
        assert got["users"] == sum(n for n, _ in expected.values())
        assert sum(got["grid"].values()) == got["users"]
    assert len({s for s in rfm.SEGMENTS}) == 10


@pytest.mark.parametrize("parse, body, path", [
    (parse_trend, {"event": "A", "from": "7d"}, "to"),
    (parse_trend, {"event": "A", "from": "7d", "to": "1d", "by": "month"}, "by"),
    (parse_trend, {"event": "A", "from": "7d", "to": "1d", "measure": {"sum": 3}}, "measure.sum"),
    (parse_trend, {"event": "A", "from": "7d", "to": "1d", "colour": 1}, "colour"),
    (parse_funnel, {"steps": ["A"], "from": "7d", "to": "1d", "window": "1d"}, "steps"),
    (parse_funnel, {"steps": ["A", {"where": []}], "from": "7d", "to": "1d", "window": "1d"}, "steps[1]"),
    (parse_funnel, {"steps": ["A", "B"], "from": "7d", "to": "1d"}, "window"),
    (parse_retention, {"first": "A", "return": "B", "from": "7d", "to": "1d", "periods": 0}, "periods"),
    (parse_retention, {"first": "A", "from": "7d", "to": "1d"}, "return"),
    (parse_rfm, {"event": "A", "from": "bad", "to": "1d"}, "from"),
    (parse_rfm, {"event": "A", "from": "7d", "to": "1d", "segment": {"did": 3}}, "segment.did"),
])
def test_bad_queries_name_their_path(parse: Callable[[Any], Any], body: dict[str, Any], path: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse(body)
    assert caught.value.path == path


def test_calendars_follow_the_zones_clock_changes() -> None:
    """A day a zone skipped is no bucket; an hour cut short by a clock change is one."""
    from datetime import datetime

    from kairos.segments.timing import Calendar

    apia = ZoneInfo("Pacific/Apia")  # skipped 2011-12-30
    start, end = (int(datetime(2011, 12, d, tzinfo=apia).timestamp() * 1000) for d in (28, 31))
    days = Calendar("day", apia, start, end + 86_400_000)
    assert [days.label(i) for i in range(len(days))] == ["2011-12-28", "2011-12-29", "2011-12-31"]
    lord_howe = ZoneInfo("Australia/Lord_Howe")  # 02:00 -> 02:30 on 2026-10-04
    midnight = int(datetime(2026, 10, 4, tzinfo=lord_howe).timestamp() * 1000)
    hours = Calendar("hour", lord_howe, midnight, midnight + 4 * 3_600_000)
    assert [hours.label(i)[11:] for i in range(len(hours))] == ["00:00+1030", "01:00+1030", "02:00+1100",
                                                                 "03:00+1100", "04:00+1100"]
    assert int(hours.starts[2] - hours.starts[1]) == 3_600_000 and int(hours.starts[3] - hours.starts[2]) == 1_800_000
