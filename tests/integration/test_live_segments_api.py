"""Live segments with real Ray and Redis: a signal is readable as soon as the upload
that caused it is acknowledged, and the shards' timer takes users out as time passes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.integration.conftest import event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def signals(api: Any, name: str, after: str = "0-0") -> list[dict[str, Any]]:
    status, body = await api.request("GET", f"/api/segments/{name}/signals?after={after}")
    assert status == 200, body
    return body["signals"]


async def test_entry_signal_is_there_when_the_upload_is_acknowledged(make_api: Any) -> None:
    api = await make_api()
    status, _ = await api.request("PUT", "/api/segments/Shoe buyers", {"live": True, "definition": {
        "did": "Charged", "where": [{"property": "Category", "op": "eq", "value": "Shoes"}]}})
    assert status == 200
    now = int(time.time())
    status, body = await api.upload([event("ann", "Charged", now, Category="Shoes"),
                                     event("bob", "Charged", now, Category="Bags")])
    assert status == 200 and body["status"] == "success"
    got = await signals(api, "Shoe buyers")
    assert [(s["entered"], s["version"]) for s in got] == [(True, 1)]
    status, _ = await api.upload([event("bob", "Charged", now, Category="Shoes")])
    later = await signals(api, "Shoe buyers", after=got[-1]["id"])
    assert [s["entered"] for s in later] == [True] and later[0]["user"] != got[0]["user"]


async def test_time_takes_a_user_out_of_a_window(make_api: Any) -> None:
    api = await make_api()
    status, _ = await api.request("PUT", "/api/segments/Active", {"live": True, "definition": {
        "did": "App Opened", "within": "24h"}})
    assert status == 200
    # An event whose 24 hours run out three seconds from now.
    await api.upload([event("cy", "App Opened", int(time.time()) - 86_400 + 3)])
    assert [s["entered"] for s in await signals(api, "Active")] == [True]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seen = [s["entered"] for s in await signals(api, "Active")]
        if len(seen) == 2:
            break
        await asyncio.sleep(0.5)
    assert seen == [True, False]


async def test_signals_of_an_unknown_segment_or_bad_cursor(make_api: Any) -> None:
    api = await make_api()
    status, body = await api.request("GET", "/api/segments/nothing/signals")
    assert status == 404 and body["status"] == "fail"
    await api.request("PUT", "/api/segments/s", {"definition": {"did": "A"}, "live": True})
    status, body = await api.request("GET", "/api/segments/s/signals?after=yesterday")
    assert (status, body["path"]) == (400, "after")
