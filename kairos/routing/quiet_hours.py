"""Quiet hours (do not disturb) in the user's own time zone.

A window is a local start and end time, e.g. 22:00-08:00, which crosses midnight. A
message due inside it is dropped or held until the window's end, by the account's
choice. Times are wall-clock times in the user's zone, so the window follows its
daylight-saving changes: on the night clocks go forward, 22:00-08:00 lasts an hour less.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import msgspec

from kairos.segments.definition import SegmentError
from kairos.segments.timing import zone

TIME_OF_DAY = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


class QuietHours(msgspec.Struct, frozen=True):
    start: time
    end: time

    @classmethod
    def parse(cls, start: str, end: str, path: str = "quiet_hours") -> "QuietHours":
        begin, finish = _time_of_day(start, f"{path}.start"), _time_of_day(end, f"{path}.end")
        if begin == finish:
            raise SegmentError(f"{path}.end", "equals the start: the window would be empty (or the whole day)")
        return cls(begin, finish)

    def end_of_window(self, now_ms: int, tz_name: str | None, fallback_tz: str = "UTC") -> int | None:
        """When the quiet window holding `now_ms` ends (epoch ms), or None if `now_ms`
        is outside every window. The user's zone comes from `tz_name`, else the fallback."""
        tz = _zone_or(tz_name, fallback_tz)
        local_day = datetime.fromtimestamp(now_ms / 1000, timezone.utc).astimezone(tz).date()
        # A window crossing midnight may have started on the day before.
        for start_day in (local_day - timedelta(days=1), local_day):
            begin = _instant(start_day, self.start, tz)
            end_day = start_day if self.end > self.start else start_day + timedelta(days=1)
            finish = _instant(end_day, self.end, tz)
            if begin <= now_ms < finish:
                return finish
        return None


def _time_of_day(text: object, path: str) -> time:
    match = TIME_OF_DAY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise SegmentError(path, "must be a local time of day 'HH:MM' (24-hour)")
    return time(int(match.group(1)), int(match.group(2)))


def _zone_or(name: str | None, fallback: str) -> ZoneInfo:
    try:
        return zone(name or fallback)
    except SegmentError:
        return zone(fallback)


def _instant(day: date, at: time, tz: ZoneInfo) -> int:
    """The instant the wall clock in `tz` reads `at` on `day`. A time that a clock change
    skips is read with the offset before the change, as zoneinfo does: 02:30 on a night
    that jumps from 02:00 to 03:00 is the instant the clock shows 03:30."""
    local = datetime.combine(day, at, tzinfo=tz)
    return int(local.astimezone(timezone.utc).timestamp() * 1000)
