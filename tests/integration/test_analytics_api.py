"""Analytics over HTTP through the Python client, with real Ray and Redis: every answer
equals the row-by-row reference on the same uploads."""

from __future__ import annotations

import asyncio
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kairos.analytics.queries import parse_funnel, parse_retention, parse_rfm, parse_trend
from kairos.client import KairosClient, KairosError
from kairos.segments.definition import parse_segment
from tests.integration.test_segments_api import AS_OF, loaded
from tests.unit import analytics_reference as reference

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
NOW_MS = AS_OF * 1000


async def client_for(make_api: Any, seed: int) -> tuple[KairosClient, Any]:
    api, ref = await loaded(make_api, seed)
    return KairosClient(api.base, api.creds.account_id, api.creds.passcode), ref


async def test_trends_funnels_retention_and_rfm_equal_the_reference(make_api: Any) -> None:
    kairos, ref = await client_for(make_api, 4)
    tz = "Asia/Kolkata"
    zone = ZoneInfo(tz)
    with kairos:
        for by in ("day", {"property": "Category"}):
            for measure in ("count", "users", {"sum": "Amount"}):
                got = await asyncio.to_thread(kairos.trends, "Charged", "2026-08-25", "2026-09-21", measure=measure,
                                              by=by, tz=tz, as_of=AS_OF)
                query = parse_trend({"event": "Charged", "from": "2026-08-25", "to": "2026-09-21", "measure": measure,
                                     "by": by})
                expected = reference.trend(ref, query, NOW_MS, zone)
                if by == "day":
                    assert {b["key"]: b["value"] for b in got if b["value"]} == {k: v for k, v in expected.items() if v}
                    assert len(got) == 28  # every day of the range, zeros included
                else:
                    assert {("s", b["key"]): b["value"] for b in got} == expected
        steps = ["Product Viewed", "Added To Cart", "Charged"]
        got_steps = await asyncio.to_thread(kairos.funnel, steps, "30d", "0d", "3d", tz=tz, as_of=AS_OF)
        expected_steps = reference.funnel(ref, parse_funnel({"steps": steps, "from": "30d", "to": "0d", "window": "3d"}),
                                          NOW_MS, zone)
        assert [(s["users"], s["median_seconds_from_previous"], s["median_seconds_from_entry"])
                for s in got_steps] == expected_steps
        assert got_steps[2]["users"] > 0
        body = {"first": "Product Viewed", "return": "Charged", "from": "2026-08-25", "to": "2026-09-10",
                "by": "week", "periods": 4}
        got_retention = await asyncio.to_thread(kairos.retention, "Product Viewed", "Charged", "2026-08-25",
                                                "2026-09-10", by="week", periods=4, tz=tz, as_of=AS_OF)
        expected_retention = reference.retention(ref, parse_retention(body), NOW_MS, zone)
        assert {c["cohort"]: (c["users"], c["retained"]) for c in got_retention["cohorts"] if c["users"]} \
            == expected_retention
        got_rfm = await asyncio.to_thread(kairos.rfm, "Charged", "30d", "0d", monetary="Amount", tz=tz, as_of=AS_OF)
        expected_rfm = reference.rfm(ref, parse_rfm({"event": "Charged", "from": "30d", "to": "0d",
                                                     "monetary": "Amount"}), NOW_MS, zone)
        assert {s["segment"]: (s["users"], s["monetary_sum"]) for s in got_rfm["segments"] if s["users"]} == expected_rfm
        assert len(got_rfm["segments"]) == 10


async def test_the_client_pages_members_and_uses_saved_segments(make_api: Any) -> None:
    kairos, ref = await client_for(make_api, 5)
    definition = {"did": "Charged", "within": "10d", "count": {"op": "gte", "value": 2}}
    expected = {k.split(":", 1)[1] for k in ref.members(parse_segment(definition), NOW_MS, ZoneInfo("UTC"))}
    with kairos:
        saved = await asyncio.to_thread(kairos.save_segment, "Repeat buyers", definition)
        assert saved["version"] == 1
        members = await asyncio.to_thread(lambda: list(kairos.segment_members(name="Repeat buyers", as_of=AS_OF,
                                                                              page_size=4)))
        assert sorted(m["identity"] for m in members) == sorted(expected) and expected
        assert await asyncio.to_thread(kairos.segment_count, name="Repeat buyers", as_of=AS_OF) == len(expected)
        with pytest.raises(KairosError) as caught:
            await asyncio.to_thread(kairos.trends, "Charged", "2020-01-01", "2026-01-01", by="hour")
        assert (caught.value.status, caught.value.path) == (400, "by")
        with pytest.raises(KairosError) as caught:
            await asyncio.to_thread(kairos.funnel, ["A", "B"], "2026-09-10", "2026-09-01", "1d")
        assert (caught.value.status, caught.value.path) == (400, "from")
        with pytest.raises(KairosError) as caught:
            await asyncio.to_thread(kairos.rfm, "Charged", "30d", "0d", segment={"did": ""})
        assert (caught.value.status, caught.value.path) == (400, "segment.did")
