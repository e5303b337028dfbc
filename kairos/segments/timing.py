"""Time for queries: windows resolved against `now` and a time zone, calendar buckets
(days, weeks, hours) in that zone, and date values read from properties."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import numpy as np

from kairos.segments.definition import Bound, SegmentError, Window

UTC = ZoneInfo("UTC")
NO_END = np.iinfo(np.int64).max
_CLEVERTAP_DATE = re.compile(r"^\$D_(-?\d{1,12})\Z")


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str | None, path: str = "tz") -> ZoneInfo:
    if not name:
        return UTC
    # Only the IANA names: not the host's own `localtime` or `posixrules`, whose meaning
    # would depend on the machine a shard happens to run on.
    if name not in _known_zones() or name in ("localtime", "posixrules", "Factory") or name.startswith(
            ("posix/", "right/")):
        raise SegmentError(path, f"{name[:60]!r} is not an IANA time zone such as 'Asia/Kolkata'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SegmentError(path, f"{name[:60]!r} is not an IANA time zone such as 'Asia/Kolkata'") from None


def zone_or(name: str | None, fallback: str) -> ZoneInfo:
    """The zone `name` (a user's `Tz`), else the fallback when it is unset or not a zone."""
    try:
        return zone(name or fallback)
    except SegmentError:
        return zone(fallback)


def local_instant(day: date, at: time, tz: ZoneInfo) -> int:
    """Epoch ms when the wall clock in `tz` reads `at` on `day`. A time that a clock change
    skips is read with the offset before the change, as zoneinfo does: 02:30 on a night
    that jumps from 02:00 to 03:00 is the instant the clock shows 03:30."""
    return int(datetime.combine(day, at, tzinfo=tz).astimezone(timezone.utc).timestamp() * 1000)


def midnight_ms(day: date, tz: ZoneInfo) -> int:
    """The first instant of `day` in `tz` (midnight, or the first valid time after a gap)."""
    return local_instant(day, time(0), tz)


def resolve_bound(bound: Bound, now_ms: int, tz: ZoneInfo, end_of_day: bool = False) -> int:
    if bound.ago_ms is not None:
        return now_ms - bound.ago_ms
    if bound.at_ms is not None:
        return bound.at_ms
    assert bound.day is not None
    day = date.fromisoformat(bound.day)
    return midnight_ms(day + timedelta(days=1) if end_of_day else day, tz)


def resolve_window(window: Window | None, now_ms: int, tz: ZoneInfo) -> tuple[int, int]:
    """[from_ms, to_ms); no window is all time."""
    if window is None:
        return -NO_END, NO_END
    start = resolve_bound(window.start, now_ms, tz) if window.start is not None else -NO_END
    end = resolve_bound(window.end, now_ms, tz, window.end_inclusive_day) if window.end is not None else NO_END
    return start, end


def date_value_ms(value: object) -> float:
    """A property value read as a date, in epoch ms: numbers are epoch seconds; strings
    are CleverTap's `$D_<epoch seconds>`, an ISO date (midnight UTC) or an ISO datetime
    with an offset. NaN for anything else."""
    if isinstance(value, bool):
        return float("nan")
    if isinstance(value, (int, float)):
        return float(value) * 1000.0
    if not isinstance(value, str):
        return float("nan")
    match = _CLEVERTAP_DATE.match(value)
    if match:
        return float(int(match.group(1)) * 1000)
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return float(midnight_ms(day, UTC))
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return float("nan")
    if moment.tzinfo is None:
        return float("nan")
    return moment.timestamp() * 1000.0


class Calendar:
    """Bucket boundaries in a time zone over a span of time: days, ISO weeks (from
    Monday) or hours. `index(ts)` gives each instant's bucket number, exactly across
    daylight-saving changes."""

    def __init__(self, unit: str, tz: ZoneInfo, from_ms: int, to_ms: int) -> None:
        if unit not in ("hour", "day", "week"):
            raise SegmentError("by", f"{unit!r} is not one of hour, day, week")
        self.unit = unit
        self.tz = tz
        try:
            starts = _hour_starts(tz, from_ms, to_ms) if unit == "hour" else _day_starts(unit, tz, from_ms, to_ms)
        except (OverflowError, ValueError):
            raise SegmentError("to", "the range reaches past the last date Kairos can represent") from None
        # A day a zone skipped (Samoa's 2011-12-30) starts where the next one does: one bucket.
        self.starts = np.unique(np.asarray(starts, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.starts.size)

    def index(self, ts: np.ndarray) -> np.ndarray:
        """Bucket of each instant (-1 before the first bucket)."""
        return np.searchsorted(self.starts, ts, side="right").astype(np.int64) - 1

    def label(self, i: int) -> str:
        moment = datetime.fromtimestamp(int(self.starts[i]) / 1000, self.tz)
        if self.unit == "hour":
            return moment.strftime("%Y-%m-%dT%H:00%z")
        return moment.date().isoformat()


def _local_hour_floor(ts_ms: int, tz: ZoneInfo) -> int:
    local = datetime.fromtimestamp(ts_ms / 1000, tz)
    return ts_ms - (local.minute * 60 + local.second) * 1000 - local.microsecond // 1000


_QUARTER_MS = 900_000  # every zone's offsets and changes fall on quarter hours


def _hour_starts(tz: ZoneInfo, from_ms: int, to_ms: int) -> list[int]:
    """Where each local hour begins, walking quarter hours: a new hour begins where the
    local (date, hour, offset) changes, so hours cut short or repeated by a clock change
    are buckets of their own."""
    first = _local_hour_floor(from_ms, tz)
    starts = [first]
    local = datetime.fromtimestamp(first / 1000, tz)
    current = (local.date(), local.hour, local.utcoffset())
    t = first - first % _QUARTER_MS + _QUARTER_MS
    while t < to_ms:
        local = datetime.fromtimestamp(t / 1000, tz)
        key = (local.date(), local.hour, local.utcoffset())
        if key != current:
            starts.append(t)
            current = key
        t += _QUARTER_MS
    return starts


def _day_starts(unit: str, tz: ZoneInfo, from_ms: int, to_ms: int) -> list[int]:
    day = datetime.fromtimestamp(from_ms / 1000, tz).date()
    if unit == "week":
        day -= timedelta(days=day.weekday())
    step = timedelta(days=7 if unit == "week" else 1)
    starts: list[int] = []
    while not starts or starts[-1] < to_ms:
        starts.append(midnight_ms(day, tz))
        day += step
    starts.pop()  # the first start at or past `to_ms`
    return starts
