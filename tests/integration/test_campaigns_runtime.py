"""Campaigns on the real runtime: created through `/api/campaigns` and CleverTap's
`/1/targets`, run by the campaign schedulers, delivered by the channel routers to the
in-app inbox, reported per variant; stopped mid-send with nothing more going out."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from kairos.campaigns.results import wilson_interval
from kairos.journeys.clock import ManualClock
from tests.integration.conftest import Api, Kairos
from tests.integration.test_delivery_runtime import eventually
from tests.integration.test_journeys_runtime import serving_again

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MINUTE = 60_000
INBOX = {"channel": "in_app", "message": {"title": "Hello {{ profile.Name }}"}}


async def upload_users(api: Api, clock: ManualClock, count: int, prefix: str = "user") -> list[str]:
    now_s = await clock.now_ms() // 1000
    users = [f"{prefix}-{i}" for i in range(count)]
    records = [{"identity": u, "type": "profile", "ts": now_s, "profileData": {"Name": u, "Tz": "UTC"}} for u in users]
    for start in range(0, len(records), 1000):
        status, body = await api.upload(records[start:start + 1000])
        assert status == 200 and body["processed"] == len(records[start:start + 1000]), body
    return users


async def create(api: Api, definition: dict[str, Any], name: str = "c") -> dict[str, Any]:
    status, body = await api.request("POST", "/api/campaigns", {"name": name, "definition": definition})
    assert status == 201, body
    return body


async def campaign(api: Api, campaign_id: int) -> dict[str, Any]:
    status, body = await api.request("GET", f"/api/campaigns/{campaign_id}")
    assert status == 200, body
    return body


async def results(api: Api, campaign_id: int) -> dict[str, Any]:
    status, body = await api.request("GET", f"/api/campaigns/{campaign_id}/results")
    assert status == 200, body
    return body


async def inbox_of(api: Api, user: str) -> list[Any]:
    status, body = await api.request("GET", f"/1/inbox?identity={user}")
    assert status == 200, body
    return body["messages"]


@pytest.fixture
async def clock(kairos: Kairos) -> Any:
    client = aioredis.Redis.from_url(kairos.settings.redis_url)
    yield ManualClock(client)
    await client.aclose()


async def test_a_campaign_sent_now_splits_its_audience_and_reports_per_variant(
        make_api: Callable[[], Awaitable[Api]], clock: ManualClock) -> None:
    api = await make_api()
    users = await upload_users(api, clock, 300)
    created = await create(api, {
        "audience": {"where": {"everyone": True}}, "schedule": "now", "control_percent": 20,
        "variants": [{"name": "A", "percent": 50, **INBOX},
                     {"name": "B", "percent": 50, "channel": "in_app", "message": {"title": "Psst {{ profile.Name }}"}}],
        "conversion_goal": {"event": "Charged", "within": "1d"}})
    campaign_id = created["id"]

    async def completed() -> dict[str, Any] | None:
        found = await campaign(api, campaign_id)
        return found if found["status"] == "completed" else None

    done = await eventually(completed)
    counters = done["counters"]
    assert counters["audience"] == 300
    assert counters["queued|A"] + counters["queued|B"] + counters["control"] == 300
    assert 30 <= counters["control"] <= 90  # 20% of 300, give or take chance

    async def all_sent() -> dict[str, Any] | None:
        found = await results(api, campaign_id)
        rows = found["variants"]
        exposed = sum(row["exposed"] for row in rows.values())
        return found if exposed == 300 and rows["A"]["sent"] + rows["B"]["sent"] == 300 - counters["control"] else None

    found = await eventually(all_sent)
    assert found["variants"]["control"]["exposed"] == counters["control"]
    assert found["variants"]["A"]["sent"] == counters["queued|A"]
    # Everyone in a variant has the message in their inbox; the control group has nothing.
    messages = {u: await inbox_of(api, u) for u in users[:40]}
    with_message = {u for u, found_messages in messages.items() if found_messages}
    assert 0 < len(with_message) < 40
    assert all(m[0]["message"]["title"] in (f"Hello {u}", f"Psst {u}") for u, m in messages.items() if m)

    # Conversions: users who buy within the goal's day after their message count for their variant.
    now_s = await clock.now_ms() // 1000
    buyers = sorted(with_message)[:5]
    status, body = await api.upload([{"identity": u, "type": "event", "evtName": "Charged", "ts": now_s + 60,
                                      "evtData": {"Amount": 10}} for u in buyers])
    assert status == 200, body

    async def converted() -> dict[str, Any] | None:
        found = await results(api, campaign_id)
        total = sum(row["converted"] for row in found["variants"].values())
        return found if total == len(buyers) else None

    found = await eventually(converted)
    assert found["variants"]["control"]["converted"] == 0
    # The delivery and held-out events went to the users themselves: no one new appeared.
    status, body = await api.request("POST", "/api/campaigns/estimate",
                                     {"definition": {"audience": {"where": {"everyone": True}}, "schedule": "now",
                                                     "message": INBOX}})
    assert status == 200 and body == {"audience": 300}, body
    for row in found["variants"].values():
        # The interval of the variant's own counts (one can be rounded on its way through JSON).
        assert row["conversion_rate_ci95"] == pytest.approx(list(wilson_interval(row["converted"], row["exposed"])))


async def test_a_stopped_campaign_sends_nothing_more(make_api: Callable[[], Awaitable[Api]],
                                                      clock: ManualClock) -> None:
    api = await make_api()
    await upload_users(api, clock, 50)
    # Ten a minute: the rest wait in the routers' delayed set for later minutes.
    created = await create(api, {"audience": {"where": {"everyone": True}}, "schedule": "now",
                                 "message": INBOX, "throttle_per_minute": 10})
    campaign_id = created["id"]

    async def first_minute_sent() -> dict[str, Any] | None:
        found = await results(api, campaign_id)
        return found if found["variants"]["A"]["sent"] >= 10 else None

    await eventually(first_minute_sent)
    status, body = await api.request("POST", "/1/targets/stop.json", {"id": campaign_id})
    assert status == 200 and body == {"status": "success"}, body
    sent_at_stop = (await results(api, campaign_id))["variants"]["A"]["sent"]
    await clock.advance(10 * MINUTE)  # every throttled message comes due

    async def all_dropped() -> dict[str, Any] | None:
        found = await results(api, campaign_id)
        row = found["variants"]["A"]
        return found if row["sent"] + row["stopped"] == 50 else None

    found = await eventually(all_dropped)
    assert found["status"] == "stopped"
    # The throttle let ten through in the first minute; the forty it held were dropped.
    assert sent_at_stop == found["variants"]["A"]["sent"] == 10
    assert found["variants"]["A"]["stopped"] == 40


async def test_the_clevertap_targets_api_creates_lists_estimates_and_reports(
        make_api: Callable[[], Awaitable[Api]], clock: ManualClock) -> None:
    api = await make_api()
    users = await upload_users(api, clock, 20)
    now_s = await clock.now_ms() // 1000
    status, body = await api.upload([{"identity": u, "type": "event", "evtName": "Product Viewed", "ts": now_s,
                                      "evtData": {"Category": "Shoes"}} for u in users[:8]])
    assert status == 200, body
    day = time.strftime("%Y%m%d", time.gmtime(now_s))
    target = {"name": "Shoe lovers", "target_mode": "notificationinbox",
              "where": {"event_name": "Product Viewed", "from": int(day), "to": int(day)},
              "content": {"title": "New shoes", "body": "In your size"}, "when": "now"}
    status, body = await api.request("POST", "/1/targets/estimate.json", target)
    assert status == 200 and body == {"status": "success", "estimates": {"total": 8}}, body
    status, body = await api.request("POST", "/1/targets/create.json", target)
    assert status == 200 and body["status"] == "success", body
    campaign_id = body["id"]
    status, listed = await api.request("POST", "/1/targets/list.json", {"from": int(day), "to": int(day)})
    assert status == 200 and [t["id"] for t in listed["targets"]] == [campaign_id], listed

    async def reported() -> dict[str, Any] | None:
        status, body = await api.request("POST", "/1/targets/result.json", {"id": campaign_id})
        assert status == 200, body
        return body if body["result"]["sent"] == 8 else None

    await eventually(reported)
    assert [m["message"]["title"] for m in await inbox_of(api, users[0])] == ["New shoes"]
    assert await inbox_of(api, users[10]) == []
    status, body = await api.request("POST", "/1/targets/create.json", {**target, "segment": "x"})
    assert status == 400 and body["status"] == "fail" and "not both" in body["error"], body
    status, body = await api.request("POST", "/1/targets/estimate.json", {
        **target, "where": {"event_properties": [{"name": "Category", "value": "Hats"}]}})
    assert status == 400 and "need 'event_name'" in body["error"], body  # not everyone, silently
    status, body = await api.request("POST", "/1/targets/result.json", {"id": 999_999})
    assert status == 400 and body["status"] == "fail", body
    # Later, in each user's zone; a slot already passed is sent the next day.
    status, body = await api.request("POST", "/1/targets/create.json", {
        **target, "when": {"type": "later", "delivery_date_time": ["20301124 09:30"], "delivery_timezone": "user",
                           "user_timezone_wrap_around": False},
        "control_group": {"type": "campaign", "percentage": 10}, "ttl": 120,
        "conversion_goal": {"event_name": "Charged", "conversion_time": "2D", "filter_type": {"event_property": [
            {"property_name": "Amount", "operator": "greater_than", "property_value": 10}]}}})
    assert status == 200, body
    later = await campaign(api, body["id"])
    assert later["status"] == "scheduled" and later["schedule"] == "local_time"
    definition = later["definition"]
    assert definition["schedule"] == {"date": "2030-11-24", "local_time": "09:30", "if_passed": "drop"}
    assert definition["control_percent"] == 10 and definition["ttl"] == "120m"
    assert definition["conversion_goal"] == {"event": "Charged", "within": "2d",
                                             "where": [{"property": "Amount", "op": "gt", "value": 10}]}


async def test_schedulers_killed_mid_send_go_on_without_sending_anyone_twice(
        kairos: Kairos, make_api: Callable[[], Awaitable[Api]], clock: ManualClock) -> None:
    api = await make_api()
    now_ms = await clock.now_ms()
    zones = {f"tokyo-{i}": "Asia/Tokyo" for i in range(15)} | {f"la-{i}": "America/Los_Angeles" for i in range(15)}
    status, body = await api.upload([{"identity": u, "type": "profile", "ts": now_ms // 1000,
                                      "profileData": {"Name": u, "Tz": tz}} for u, tz in zones.items()])
    assert status == 200, body
    day = datetime.fromtimestamp(now_ms / 1000 + 2 * 86_400, timezone.utc).date()
    created = await create(api, {"audience": {"where": {"everyone": True}}, "message": INBOX,
                                 "schedule": {"local_time": "12:00", "date": day.isoformat()}})
    campaign_id = created["id"]
    # Noon in Tokyo (03:00 UTC): the Tokyo half goes out; Los Angeles waits for its noon.
    await clock.set(int(datetime.combine(day, datetime.min.time(), timezone.utc).timestamp() * 1000) + 3 * 3_600_000
                    + MINUTE)

    async def tokyo_sent() -> dict[str, Any] | None:
        found = await results(api, campaign_id)
        return found if found["variants"]["A"]["sent"] == 15 else None

    await eventually(tokyo_sent)
    pids = await asyncio.gather(*(c.pid.remote() for c in kairos.deployment.campaigns))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    await serving_again(kairos.deployment)
    await clock.set(int(datetime.combine(day, datetime.min.time(), timezone.utc).timestamp() * 1000)
                    + 20 * 3_600_000 + MINUTE)

    async def all_sent() -> dict[str, Any] | None:
        found = await results(api, campaign_id)
        return found if found["variants"]["A"]["sent"] >= 30 and found["status"] == "completed" else None

    found = await eventually(all_sent, timeout_s=90)
    assert found["variants"]["A"]["sent"] == 30 and found["audience"] == 30
    for user in zones:
        assert len(await inbox_of(api, user)) == 1, user


async def test_a_triggered_campaign_answers_the_event_after_its_delay(
        make_api: Callable[[], Awaitable[Api]], clock: ManualClock) -> None:
    api = await make_api()
    await upload_users(api, clock, 3)
    created = await create(api, {"schedule": {"trigger": {"event": "Added To Cart", "where": [
        {"property": "Value", "op": "gte", "value": 50}]}, "delay": "1h", "per_user": "once"},
        "message": {"channel": "in_app", "message": {"title": "Still thinking about {{ event.Item }}?"}}})
    campaign_id = created["id"]
    now_s = await clock.now_ms() // 1000
    status, body = await api.upload([
        {"identity": "user-0", "type": "event", "evtName": "Added To Cart", "ts": now_s, "evtData": {"Value": 80, "Item": "boots"}},
        {"identity": "user-1", "type": "event", "evtName": "Added To Cart", "ts": now_s, "evtData": {"Value": 5, "Item": "socks"}},
    ])
    assert status == 200, body

    async def triggered() -> dict[str, Any] | None:
        found = await campaign(api, campaign_id)
        return found if found["counters"].get("triggered") == 1 else None

    await eventually(triggered)
    await asyncio.sleep(0.5)
    assert await inbox_of(api, "user-0") == []  # not before its hour
    await clock.advance(61 * MINUTE)

    async def delivered() -> list[Any]:
        return await inbox_of(api, "user-0")

    [message] = await eventually(delivered)
    assert message["message"]["title"] == "Still thinking about boots?"
    assert await inbox_of(api, "user-1") == []
