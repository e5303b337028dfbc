"""Analytics query bodies (trends, funnels, retention, RFM): parsed and validated, each
error naming its path, like segment definitions.

    trend:     {"event", "where", "from", "to", "measure": "count" | "users" | {"sum": P},
                "by": "hour" | "day" | "week" | {"property": P}}
    funnel:    {"steps": [E | {"event", "where"}, ...], "from", "to", "window": "7d"}
    retention: {"first": E | {"event", "where"}, "return": E | {...}, "from", "to",
                "by": "day" | "week", "periods": N}
    rfm:       {"event", "where", "from", "to", "monetary": P}

`from` / `to` take what a segment window takes (dates are whole days, inclusive, in
the query's `tz`); all queries also take `tz`, `as_of` and an optional `segment` that
limits the users counted.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kairos.segments.definition import (
    Condition, SegmentError, Step, Window, event_name, no_extra_fields, parse_bound, parse_duration,
    parse_segment, parse_where,
)

MAX_STEPS = 10
MAX_PERIODS = 120
MAX_RANGE_BUCKETS = 5000
COMMON = {"tz", "as_of", "segment"}


class TrendQuery(msgspec.Struct, frozen=True):
    step: Step
    window: Window
    measure: str  # count | users | sum
    sum_of: str | None
    by: str  # hour | day | week | property
    by_property: str | None
    segment: Condition | None


class FunnelQuery(msgspec.Struct, frozen=True):
    steps: tuple[Step, ...]
    window: Window
    conversion_ms: int
    segment: Condition | None


class RetentionQuery(msgspec.Struct, frozen=True):
    first: Step
    back: Step
    window: Window
    by: str  # day | week
    periods: int
    segment: Condition | None


class RfmQuery(msgspec.Struct, frozen=True):
    step: Step
    window: Window
    monetary: str | None
    segment: Condition | None


def parse_trend(raw: Any) -> TrendQuery:
    body = _object(raw, {"event", "where", "from", "to", "measure", "by"})
    measure, sum_of = _choice(body.get("measure", "count"), "measure", ("count", "users"), "sum",
                              "a numeric event property")
    by, by_property = _choice(body.get("by", "day"), "by", ("hour", "day", "week"), "property", "an event property")
    return TrendQuery(_step_of(body, "event"), _range(body), measure, sum_of, by, by_property, _segment(body))


def _choice(raw: Any, path: str, choices: tuple[str, ...], key: str, what: str) -> tuple[str, str | None]:
    """One of `choices`, or {key: property name}: (choice or key, the property name)."""
    if isinstance(raw, dict):
        no_extra_fields(raw, {key}, path)
        name = raw.get(key)
        if not isinstance(name, str) or not name:
            raise SegmentError(f"{path}.{key}", f"must name {what}")
        return key, name
    if raw not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise SegmentError(path, f"must be one of {options} or {{\"{key}\": property}}")
    return raw, None


def parse_funnel(raw: Any) -> FunnelQuery:
    body = _object(raw, {"steps", "from", "to", "window"})
    steps_raw = body.get("steps")
    if not isinstance(steps_raw, list) or not 2 <= len(steps_raw) <= MAX_STEPS:
        raise SegmentError("steps", f"must be a list of 2 to {MAX_STEPS} steps")
    steps = tuple(_step(s, f"steps[{i}]") for i, s in enumerate(steps_raw))
    if "window" not in body:
        raise SegmentError("window", "is required: the conversion window, e.g. '7d'")
    return FunnelQuery(steps, _range(body), parse_duration(body["window"], "window"), _segment(body))


def parse_retention(raw: Any) -> RetentionQuery:
    body = _object(raw, {"first", "return", "from", "to", "by", "periods"})
    for field in ("first", "return"):
        if field not in body:
            raise SegmentError(field, "is required")
    by = body.get("by", "day")
    if by not in ("day", "week"):
        raise SegmentError("by", "must be 'day' or 'week'")
    periods = body.get("periods", 8 if by == "week" else 14)
    if isinstance(periods, bool) or not isinstance(periods, int) or not 1 <= periods <= MAX_PERIODS:
        raise SegmentError("periods", f"must be an integer from 1 to {MAX_PERIODS}")
    return RetentionQuery(_step(body["first"], "first"), _step(body["return"], "return"), _range(body), by, periods,
                          _segment(body))


def parse_rfm(raw: Any) -> RfmQuery:
    body = _object(raw, {"event", "where", "from", "to", "monetary"})
    monetary = body.get("monetary")
    if monetary is not None and (not isinstance(monetary, str) or not monetary):
        raise SegmentError("monetary", "must name a numeric event property")
    return RfmQuery(_step_of(body, "event"), _range(body), monetary, _segment(body))


def _object(raw: Any, fields: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SegmentError("query", "must be a JSON object")
    no_extra_fields(raw, fields | COMMON, "")
    return raw


def _range(body: dict[str, Any]) -> Window:
    if "from" not in body or "to" not in body:
        raise SegmentError("from" if "from" not in body else "to", "is required (a date, ISO datetime, epoch seconds or '30d')")
    end = parse_bound(body["to"], "to")
    return Window(parse_bound(body["from"], "from"), end, end.day is not None)


def _step_of(body: dict[str, Any], field: str) -> Step:
    if field not in body:
        raise SegmentError(field, "is required")
    return Step(event_name(body[field], field), parse_where(body.get("where"), "where"))


def _step(raw: Any, path: str) -> Step:
    if isinstance(raw, str):
        return Step(event_name(raw, path), ())
    if not isinstance(raw, dict):
        raise SegmentError(path, "must be an event name or an object with 'event' and 'where'")
    no_extra_fields(raw, {"event", "where"}, path)
    if "event" not in raw:
        raise SegmentError(path, "needs 'event'")
    return Step(event_name(raw["event"], f"{path}.event"), parse_where(raw.get("where"), f"{path}.where"))


def _segment(body: dict[str, Any]) -> Condition | None:
    return parse_segment(body["segment"]) if "segment" in body else None

