"""Quiet hours (do not disturb) in the user's own time zone.

A window is a local start and end time, e.g. 22:00-08:00, which crosses midnight. A
message due inside it is dropped or held until the window's end, by the account's
choice. Times are wall-clock times in the user's zone, so the window follows its
daylight-saving changes: on the night clocks go forward, 22:00-08:00 lasts an hour less.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from functools import lru_cache

import msgspec

from kairos.segments.definition import SegmentError, parse_time_of_day
from kairos.segments.timing import local_instant, zone_or


class QuietHours(msgspec.Struct, frozen=True):
    start: time
    end: time

    @classmethod
    def parse(cls, start: str, end: str, path: str = "quiet_hours") -> "QuietHours":
        begin, finish = parse_time_of_day(start, f"{path}.start"), parse_time_of_day(end, f"{path}.end")
        if begin == finish:
            raise SegmentError(f"{path}.end", "equals the start: the window would be empty (or the whole day)")
        return cls(begin, finish)

    def end_of_window(self, now_ms: int, tz_name: str | None, fallback_tz: str = "UTC") -> int | None:
        """When the quiet window holding `now_ms` ends (epoch ms), or None if `now_ms`
        is outside every window. The user's zone comes from `tz_name`, else the fallback."""
        # A router decides thousands of messages at one `now`, over a few dozen zones.
        return _end_of_window(self.start, self.end, now_ms, tz_name, fallback_tz)


@lru_cache(maxsize=4096)
def _end_of_window(start: time, end: time, now_ms: int, tz_name: str | None, fallback_tz: str) -> int | None:
    tz = zone_or(tz_name, fallback_tz)
    local_day = datetime.fromtimestamp(now_ms / 1000, timezone.utc).astimezone(tz).date()
    # A window crossing midnight may have started on the day before.
    for start_day in (local_day - timedelta(days=1), local_day):
        begin = local_instant(start_day, start, tz)
        end_day = start_day if end > start else start_day + timedelta(days=1)
        finish = local_instant(end_day, end, tz)
        if begin <= now_ms < finish:
            return finish
    return None
