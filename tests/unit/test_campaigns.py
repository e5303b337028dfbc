"""Campaigns without Ray or Redis: the definition language and its errors, stable A/B
splits, run times, local slots, conversion attribution and the results' statistics."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest

from kairos.analytics.campaign_results import _converted
from kairos.campaigns import planning
from kairos.campaigns.definition import CampaignError, LocalTime, Recurring, SendAt, Triggered, parse_campaign
from kairos.campaigns.results import two_proportion_p_value, variant_results, wilson_interval
from kairos.segments.evaluate import EventRows

pytestmark = pytest.mark.timeout(30)

INBOX = {"channel": "in_app", "message": {"title": "Hi"}}
DEEP: Any = []
for _ in range(600):
    DEEP = [DEEP]  # deeper than templates are walked: refused, not a RecursionError
EVERYONE = {"where": {"everyone": True}}


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(timezone.utc).timestamp() * 1000)


def campaign(**fields: Any) -> Any:
    """A campaign with these fields over the defaults (a field given as None is left out)."""
    body = {"audience": EVERYONE, "schedule": "now", "message": INBOX, **fields}
    return parse_campaign({k: v for k, v in body.items() if v is not None}, 1_000)


# --- the language ------------------------------------------------------------------------


def test_each_schedule_kind_parses() -> None:
    assert campaign().schedule == SendAt(1_000)
    assert campaign(schedule={"at": "2026-12-01T09:00:00+01:00"}).schedule == SendAt(at("2026-12-01T08:00:00+00:00"))
    local = campaign(schedule={"local_time": "09:00", "date": "2026-12-01", "if_passed": "drop"}).schedule
    assert isinstance(local, LocalTime) and local.if_passed == "drop"
    assert campaign(schedule={"every": "week", "on": ["fri", "mon"], "at": "07:05"}).schedule == \
        Recurring("5 7 * * 1,5", 1_000, None)
    assert campaign(schedule={"every": "day", "at": "09:00"}).schedule.cron == "0 9 * * *"
    trigger = parse_campaign({"schedule": {"trigger": {"event": "Signed Up"}, "delay": "1h"}, "message": INBOX}, 0)
    assert trigger.schedule == Triggered("Signed Up", (), 3_600_000, "always")


@pytest.mark.parametrize("fields, path", [
    ({"schedule": "tomorrow"}, "definition.schedule"),
    ({"schedule": {"at": "2026-12-01T09:00:00"}}, "definition.schedule.at"),
    ({"schedule": {"cron": "0 9 * *"}}, "definition.schedule.cron"),
    ({"schedule": {"cron": "0 9 * * * 5"}}, "definition.schedule.cron"),
    ({"schedule": {"every": "week", "on": ["someday"], "at": "09:00"}}, "definition.schedule.on"),
    ({"schedule": {"local_time": "25:00", "date": "2026-12-01"}}, "definition.schedule.local_time"),
    ({"schedule": {"local_time": "09:00", "date": "2026-13-01"}}, "definition.schedule.date"),
    ({"schedule": {"local_time": "09:00", "date": "2026-12-01", "if_passed": "later"}}, "definition.schedule.if_passed"),
    ({"schedule": {"every": "day", "at": "09:00", "start": "2026-12-02T00:00:00Z", "end": "2026-12-01T00:00:00Z"}},
     "definition.schedule.end"),
    ({"audience": {"segment": "a", "where": {"everyone": True}}}, "definition.audience"),
    ({"audience": {"where": {"profile": "Age", "op": "bigger", "value": 1}}}, "definition.audience.where.op"),
    ({"variants": [{"name": "A", "percent": 60, **INBOX}, {"name": "B", "percent": 30, **INBOX}]},
     "definition.message"),
    ({"message": {"channel": "push", "message": {"tittle": "x"}}}, "definition.message.message"),
    ({"control_percent": 95}, "definition.control_percent"),
    ({"conversion_goal": {"event": "Charged"}}, "definition.conversion_goal.within"),
    ({"ttl": "60d"}, "definition.ttl"),
    ({"message": {"channel": "in_app", "message": {"title": "{{ event.Item }}"}}}, "definition.message"),
    ({"message": {"channel": "webhook", "message": {"payload": DEEP}}}, "definition.message.message"),
    ({"schedule": {"local_time": "09:00", "date": "2099-W01-1"}}, "definition.schedule.date"),
    ({"schedule": {"cron": "*/99999999999999999999 * * * *"}}, "definition.schedule.cron"),
])
def test_bad_definitions_name_the_field_at_fault(fields: dict[str, Any], path: str) -> None:
    body = {"audience": EVERYONE, "schedule": "now", "message": INBOX, **fields}
    if body.get("message") is None:
        del body["message"]
    with pytest.raises(CampaignError) as caught:
        parse_campaign(body, 0)
    assert caught.value.path.startswith(path), caught.value


def test_variant_percents_must_add_up_and_names_differ() -> None:
    with pytest.raises(CampaignError, match="add up to 90"):
        campaign(message=None, variants=[{"name": "A", "percent": 60, **INBOX}, {"name": "B", "percent": 30, **INBOX}])
    with pytest.raises(CampaignError, match="distinct"):
        campaign(message=None, variants=[{"name": "A", "percent": 50, **INBOX}, {"name": "A", "percent": 50, **INBOX}])
    with pytest.raises(CampaignError, match="not 'control'"):
        campaign(message=None, variants=[{"name": "control", "percent": 50, **INBOX},
                                         {"name": "B", "percent": 50, **INBOX}])


# --- splits --------------------------------------------------------------------------------


def test_splits_follow_the_percents_and_never_move() -> None:
    ab = campaign(message=None, control_percent=10, variants=[
        {"name": "A", "percent": 70, **INBOX}, {"name": "B", "percent": 30, **INBOX}])
    users = [f"user-{i}" for i in range(20_000)]
    groups = {u: planning.assign(7, ab, u) for u in users}
    sizes = Counter(groups.values())
    # Control takes 10%; the variants share the other 90% as 70:30.
    assert abs(sizes["control"] / 20_000 - 0.10) < 0.01
    assert abs(sizes["A"] / 20_000 - 0.63) < 0.015
    assert abs(sizes["B"] / 20_000 - 0.27) < 0.015
    # The same user gets the same group every time (every run, every process) ...
    assert all(planning.assign(7, ab, u) == g for u, g in list(groups.items())[:2000])
    # ... and another campaign splits independently.
    other = Counter((groups[u], planning.assign(8, ab, u)) for u in users)
    assert abs(other[("A", "A")] / 20_000 - 0.63 * 0.63) < 0.02


# --- when runs fall -------------------------------------------------------------------------


def test_local_slots_move_to_the_next_day_or_drop_when_passed() -> None:
    schedule = LocalTime(datetime(2026, 11, 24).date(), datetime(2026, 1, 1, 9).time(), "next_day")
    run = planning.local_run_start(schedule, at("2026-11-24T06:00:00+00:00"))
    assert run == at("2026-11-24T06:00:00+00:00")
    assert planning.local_slot(schedule, run, "Europe/London", "UTC") == at("2026-11-24T09:00:00+00:00")
    assert planning.local_slot(schedule, run, "Asia/Kolkata", "UTC") == at("2026-11-25T03:30:00+00:00")
    assert planning.local_slot(schedule, run, "not/a zone", "America/New_York") == at("2026-11-24T14:00:00+00:00")
    dropping = LocalTime(schedule.day, schedule.at, "drop")
    assert planning.local_slot(dropping, run, "Asia/Kolkata", "UTC") is None
    # Saved well ahead: the run starts when 09:00 comes to the first zone on earth.
    assert planning.local_run_start(schedule, 0) == at("2026-11-23T19:00:00+00:00")


def test_recurring_runs_fire_in_the_campaign_zone_across_clock_changes() -> None:
    daily = campaign(schedule={"every": "day", "at": "09:00"}, tz="Europe/Paris")
    # Paris moved to winter time on 2026-10-25: 09:00 is 07:00 UTC before, 08:00 after.
    assert planning.latest_run(daily, 0, at("2026-10-24T08:00:00+00:00")) == at("2026-10-24T07:00:00+00:00")
    assert planning.latest_run(daily, 0, at("2026-10-26T09:30:00+00:00")) == at("2026-10-26T08:00:00+00:00")
    assert planning.latest_run(daily, 0, at("2026-10-26T08:00:00+00:00")) == at("2026-10-26T08:00:00+00:00")
    assert planning.next_run(daily, 0, at("2026-10-26T08:00:00+00:00")) == at("2026-10-27T08:00:00+00:00")
    # A run more than 3 hours late is skipped (the next one goes at its time)...
    assert planning.latest_run(daily, 0, at("2026-10-26T11:01:00+00:00")) is None
    # ... as is one from before the campaign was saved.
    assert planning.latest_run(daily, at("2026-10-26T08:30:00+00:00"), at("2026-10-26T09:00:00+00:00")) is None
    ending = campaign(schedule={"every": "day", "at": "09:00", "start": "2026-11-01T00:00:00Z",
                                "end": "2026-11-03T00:00:00Z"})
    assert planning.latest_run(ending, 0, at("2026-10-31T09:30:00+00:00")) is None
    assert planning.latest_run(ending, 0, at("2026-11-02T10:00:00+00:00")) == at("2026-11-02T09:00:00+00:00")
    assert planning.latest_run(ending, 0, at("2026-11-03T09:30:00+00:00")) is None
    assert planning.next_run(ending, 0, at("2026-11-02T10:00:00+00:00")) is None


@pytest.mark.parametrize("schedule", [
    {"every": "day", "at": "09:00"},
    {"every": "day", "at": "09:00", "start": "2026-10-25T00:00:00Z", "end": "2026-10-28T00:00:00Z"},
    {"cron": "*/90 * * * *"},
    {"at": "2026-10-26T10:00:00Z"},
])
def test_the_latest_run_holds_until_the_time_given_with_it(schedule: dict[str, Any]) -> None:
    # Schedulers ask every step about every campaign, and ask croniter again only when the
    # answer's time is up: it must be the answer croniter would have given at each moment.
    made = campaign(schedule=schedule, tz="Europe/Paris")
    created = at("2026-10-24T00:00:00+00:00")
    cached: tuple[int, int | None, int | None] | None = None
    computed = 0
    for now in range(at("2026-10-24T00:00:00+00:00"), at("2026-10-30T00:00:00+00:00"), 7 * 60_000 + 13):
        if cached is None or not (cached[1] is None or now < cached[1]):
            latest, until = planning.latest_run_holding(made, created, now)
            assert until is None or until > now
            cached, computed = (now, until, latest), computed + 1
        assert cached[2] == planning.latest_run(made, created, now), now
    assert computed <= 2 * 6 * 24 * 60 // 90 + 2  # changes at runs and late edges, not every step


def test_cron_that_never_fires_and_dates_passed_everywhere_are_refused() -> None:
    with pytest.raises(CampaignError, match="never fires"):
        campaign(schedule={"cron": "0 9 30 2 *"})
    with pytest.raises(CampaignError, match="passed in every time zone"):
        parse_campaign({"audience": EVERYONE, "message": INBOX,
                        "schedule": {"local_time": "09:00", "date": "2026-11-20"}}, at("2026-11-24T00:00:00+00:00"))
    with pytest.raises(CampaignError, match="in the past"):
        parse_campaign({"audience": EVERYONE, "message": INBOX, "schedule": {"at": "2026-11-20T00:00:00Z"}},
                       at("2026-11-24T00:00:00+00:00"))
    with pytest.raises(CampaignError, match="date"):
        campaign(schedule={"local_time": "09:00", "date": "0001-01-01"})


def test_a_campaign_ttl_and_variant_travel_with_its_requests() -> None:
    c = campaign(ttl="2h", throttle_per_minute=100)
    request = planning.send_request("acct", 5, c, "A", "u1", planning.send_id(5, 10, "u1"), 1_000_000)
    assert (request.expires_ms, request.variant, request.source_kind, request.journey, request.throttle_per_minute) \
        == (1_000_000 + 2 * 3_600_000, "A", "campaign", "5", 100)


# --- results -------------------------------------------------------------------------------


def test_conversions_count_goal_events_after_an_exposure_within_the_window() -> None:
    # Exposures sorted by user then time: user 1 at 100 and 10_000; user 2 at 500; user 3 never.
    users_sorted, ts_sorted = np.array([1, 1, 2]), np.array([100, 10_000, 500])
    goals = EventRows(np.arange(6), np.array([1, 1, 2, 2, 3, 2]), np.array([50, 10_500, 400, 1_600, 200, 501]))
    # user 1: 50 is before any exposure, 10_500 is 500 after the second (in window);
    # user 2: 400 is before, 1_600 is 1_100 after (outside a 1_000 window), 501 is in;
    # user 3 was never exposed.
    assert _converted(users_sorted, ts_sorted, goals, 1_000, size=4).tolist() == [1, 2]
    assert _converted(users_sorted, ts_sorted, goals, 0, size=4).tolist() == []


def test_wilson_intervals_and_p_values() -> None:
    low, high = wilson_interval(50, 1000)
    assert 0.038 < low < 0.039 and 0.065 < high < 0.066
    assert wilson_interval(0, 0) == (0.0, 0.0)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert two_proportion_p_value(120, 1000, 80, 1000) < 0.01
    assert two_proportion_p_value(100, 1000, 98, 1000) > 0.5


def test_the_winner_is_named_only_when_significant() -> None:
    def table(a: int, b: int, control: int) -> dict[str, Any]:
        engagement = {"A": {"exposed": 1000, "converted": a}, "B": {"exposed": 1000, "converted": b},
                      "control": {"exposed": 1000, "converted": control}}
        return variant_results(9, ["A", "B"], True, {"queued|A": 1000}, {"campaign:9#A|sent": 990}, engagement)

    clear = table(150, 90, 80)
    assert clear["winner"] == "A" and clear["variants"]["A"]["sent"] == 990
    assert clear["variants"]["A"]["conversion_rate"] == 0.15
    close = table(100, 95, 90)
    assert close["winner"] is None and close["leader"] == "A"
    assert table(50, 52, 120)["winner"] == "control"  # the message hurts
