"""The channel router's delivery policy (issue #6, first part): quiet hours in each
user's zone, across midnight and clock changes, and frequency caps."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from kairos.routing.caps import NEVER, Sent, allowed_from, horizon_ms, parse_rules
from kairos.routing.quiet_hours import QuietHours
from kairos.segments.definition import SegmentError

pytestmark = pytest.mark.timeout(30)

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def at(text: str, tz: str) -> int:
    """Epoch ms of a local wall-clock time in a zone."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).astimezone(timezone.utc).timestamp() * 1000)


NIGHT = QuietHours.parse("22:00", "08:00")


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham"])
def test_a_night_window_crosses_midnight_in_each_users_zone(tz: str) -> None:
    assert NIGHT.end_of_window(at("2026-06-10T21:59", tz), tz) is None
    assert NIGHT.end_of_window(at("2026-06-10T22:00", tz), tz) == at("2026-06-11T08:00", tz)
    assert NIGHT.end_of_window(at("2026-06-11T00:30", tz), tz) == at("2026-06-11T08:00", tz)
    assert NIGHT.end_of_window(at("2026-06-11T07:59", tz), tz) == at("2026-06-11T08:00", tz)
    assert NIGHT.end_of_window(at("2026-06-11T08:00", tz), tz) is None


def test_a_daytime_window_and_the_fallback_zone() -> None:
    lunch = QuietHours.parse("12:00", "13:30")
    assert lunch.end_of_window(at("2026-06-10T12:15", "Europe/Paris"), "Europe/Paris") == at("2026-06-10T13:30",
                                                                                              "Europe/Paris")
    assert lunch.end_of_window(at("2026-06-10T23:00", "Europe/Paris"), "Europe/Paris") is None
    # No (or an unknown) zone on the profile: the account's fallback zone decides.
    noon_utc = at("2026-06-10T12:15", "UTC")
    assert lunch.end_of_window(noon_utc, None) == at("2026-06-10T13:30", "UTC")
    assert lunch.end_of_window(noon_utc, "Mars/Olympus", "UTC") == at("2026-06-10T13:30", "UTC")
    assert lunch.end_of_window(noon_utc, None, "Asia/Tokyo") is None


def test_the_night_clocks_go_forward_is_an_hour_shorter() -> None:
    tz = "America/New_York"  # 2026-03-08: 02:00 EST becomes 03:00 EDT
    window = QuietHours.parse("01:00", "06:00")
    start, end = at("2026-03-08T01:00", tz), window.end_of_window(at("2026-03-08T01:00", tz), tz)
    assert end == at("2026-03-08T06:00", tz) and end - start == 4 * HOUR
    autumn = window.end_of_window(at("2026-11-01T01:00", tz), tz)  # 02:00 EDT becomes 01:00 EST
    assert autumn is not None and autumn - at("2026-11-01T01:00", tz) == 6 * HOUR


@pytest.mark.parametrize(("start", "end", "path"), [
    ("22:00", "22:00", "quiet_hours.end"), ("24:00", "08:00", "quiet_hours.start"),
    ("22:00", "8:00", "quiet_hours.end"), ("22:00\n", "08:00", "quiet_hours.start"),
])
def test_bad_windows_name_their_part(start: str, end: str, path: str) -> None:
    with pytest.raises(SegmentError) as caught:
        QuietHours.parse(start, end)
    assert caught.value.path == path


T0 = 1_790_000_000_000


def sent(ago_ms: int, channel: str = "push", kind: str = "journey", source: str = "welcome") -> Sent:
    return Sent(T0 - ago_ms, channel, kind, source)


def test_at_most_n_in_a_window_slides_with_time() -> None:
    rules = parse_rules([{"channel": "push", "max": 3, "within": "7d"}])
    history = [sent(6 * DAY), sent(2 * DAY), sent(HOUR)]
    assert allowed_from(rules, history[1:], "push", "journey", "welcome", T0) is None
    # Three in the last 7 days: allowed once the oldest is 7 days old.
    assert allowed_from(rules, history, "push", "journey", "welcome", T0) == T0 + DAY
    assert allowed_from(rules, history, "email", "journey", "welcome", T0) is None  # another channel
    assert allowed_from(rules, history, "push", "journey", "welcome", T0 + DAY) is None


def test_a_minimum_gap_and_an_all_channel_cap_combine() -> None:
    rules = parse_rules([{"channel": "push", "min_gap": "4h"}, {"max": 2, "within": "1d"}])
    history = [sent(20 * HOUR, "email"), sent(HOUR, "push")]
    # The gap says 3 h from now; the daily cap says when the email is a day old (4 h).
    assert allowed_from(rules, history, "push", "journey", "welcome", T0) == T0 + 4 * HOUR
    assert allowed_from(rules, history, "sms", "journey", "welcome", T0) == T0 + 4 * HOUR
    assert allowed_from(rules, history[:1], "sms", "journey", "welcome", T0) is None


def test_per_journey_and_per_campaign_caps_count_each_source_apart() -> None:
    rules = parse_rules([{"per": "journey", "max": 1, "within": "1d"}])
    history = [sent(HOUR, source="welcome"), sent(HOUR, kind="campaign", source="sale")]
    assert allowed_from(rules, history, "push", "journey", "welcome", T0) == T0 + 23 * HOUR
    assert allowed_from(rules, history, "push", "journey", "cart", T0) is None
    assert allowed_from(rules, history, "push", "campaign", "sale", T0) is None  # the rule is per journey


def test_a_cap_of_zero_never_allows_and_the_horizon_covers_every_rule() -> None:
    rules = parse_rules([{"channel": "sms", "max": 0, "within": "1d"}, {"channel": "push", "min_gap": "2w"}])
    assert allowed_from(rules, [], "sms", "journey", "welcome", T0) == NEVER
    assert horizon_ms(rules) == 14 * DAY


@pytest.mark.parametrize(("raw", "path"), [
    ({"channel": "pigeon", "max": 1, "within": "1d"}, "caps[0].channel"),
    ({"per": "user", "max": 1, "within": "1d"}, "caps[0].per"),
    ({"max": -1, "within": "1d"}, "caps[0].max"),
    ({"max": 1}, "caps[0].within"),
    ({"max": 1, "within": "1 day"}, "caps[0].within"),
    ({"min_gap": "1h", "max": 2, "within": "1d"}, "caps[0]"),
    ({"channel": "push", "limit": 3}, "caps[0].limit"),
])
def test_bad_rules_name_their_part(raw: dict, path: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse_rules([raw])
    assert caught.value.path == path
