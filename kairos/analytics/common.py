"""What every analytics query does first: resolve its date range, build its calendar,
and select the live events of a step (of the users in its segment, if it has one)."""

from __future__ import annotations

from zoneinfo import ZoneInfo


from kairos.analytics.queries import MAX_RANGE_BUCKETS
from kairos.segments.definition import Condition, SegmentError, Step, Window
from kairos.segments.evaluate import EventRows, StoreQuery
from kairos.segments.timing import Calendar, resolve_window

DAY_MS = 86_400_000


def date_range(window: Window, now_ms: int, tz: ZoneInfo) -> tuple[int, int]:
    """[from_ms, to_ms) of a query's from / to, checked to be a real range."""
    from_ms, to_ms = resolve_window(window, now_ms, tz)
    if from_ms >= to_ms:
        raise SegmentError("from", "must be before 'to'")
    return from_ms, to_ms


def calendar(unit: str, from_ms: int, to_ms: int, tz: ZoneInfo, path: str = "by") -> Calendar:
    span = (to_ms - from_ms) / {"hour": 3_600_000, "day": DAY_MS, "week": 7 * DAY_MS}[unit]
    if span > MAX_RANGE_BUCKETS:
        raise SegmentError(path, f"the range holds {int(span)} {unit}s; at most {MAX_RANGE_BUCKETS} buckets")
    return Calendar(unit, tz, from_ms, to_ms)


class Scope:
    """One account's store in one partition, seen by one query: its live users, cut
    down to the query's segment if it names one."""

    def __init__(self, query: StoreQuery, segment: Condition | None) -> None:
        self.query = query
        self.users = query.users(segment) if segment is not None else query.live
        self.size = query.size

    def events(self, step: Step, from_ms: int, to_ms: int) -> EventRows:
        selected = self.query.matching(step.event, step.where, from_ms, to_ms)
        return selected.where(self.users[selected.users]) if selected.rows.size else selected
