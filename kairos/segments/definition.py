"""The segment definition language: JSON in, a validated condition tree out.

A segment is one condition; conditions nest through `all`, `any` and `not`:

    {"profile": "Age", "op": "gte", "value": 30}
    {"did": "Charged", "where": [{"property": "Category", "op": "eq", "value": "Shoes"}],
     "within": "30d", "count": {"op": "gte", "value": 2}}
    {"did": "Charged", "within": "30d", "sum": "Amount", "op": "gte", "value": 500}
    {"did_not": "App Launched", "within": "7d"}
    {"first_time": "App Launched", "within": "7d"}
    {"last_time": "Charged", "within": {"from": "60d", "to": "30d"}}
    {"sequence": ["Added To Cart", "Charged"], "gap": "1h", "within": "7d"}
    {"all": [...]}, {"any": [...]}, {"not": {...}}
    {"everyone": true}                              every user (a campaign to the whole base)

Every error names the path of the offending part (`segment.all[2].within`), so a
400 tells the author exactly what to fix. The semantics of each operator are in the
README ("Segments"); `kairos.segments.evaluate` implements them over the columns.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, time, timezone
from typing import Any, Union

import msgspec

MAX_DEPTH = 12
MAX_NODES = 256
MAX_LIST_VALUES = 1000
MAX_TEXT_CHARS = 512
FIRST_YEAR, LAST_YEAR = 1970, 9998
# Numbers in conditions: beyond this an int cannot be compared exactly with float64 columns.
MAX_NUMBER = 2**63

PROPERTY_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "contains", "exists",
                "not_exists", "before", "after")
COMPARE_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "between")
METRICS = ("count", "sum", "avg", "min", "max")
_DURATION = re.compile(r"^(\d{1,6})(m|h|d|w)\Z")
_TIME_OF_DAY = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


class SegmentError(ValueError):
    """A definition that cannot be used; `path` locates the offending part."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Raised in a shard, it crosses to the gateway pickled: rebuild it from its parts.
        return (SegmentError, (self.path, self.message))


class Bound(msgspec.Struct, frozen=True):
    """One end of a time window: `ago_ms` before now, an absolute instant, or a calendar
    date (its midnight in the query's time zone)."""

    ago_ms: int | None = None
    at_ms: int | None = None
    day: str | None = None


class Window(msgspec.Struct, frozen=True):
    """[start, end): `end` None means no upper bound. A date given as `to` includes that
    whole day (CleverTap's from/to days are inclusive)."""

    start: Bound | None
    end: Bound | None
    end_inclusive_day: bool = False


class PropertyFilter(msgspec.Struct, frozen=True):
    name: str
    op: str
    value: Any = None


class ProfileCondition(msgspec.Struct, frozen=True):
    filter: PropertyFilter


class EventCondition(msgspec.Struct, frozen=True):
    """The users whose events named `event` (matching every `where` filter, inside
    `window`) have `metric` compared by `op` with `value`; `negate` is `did_not`."""

    event: str
    where: tuple[PropertyFilter, ...]
    window: Window | None
    metric: str  # count | sum | avg | min | max
    metric_property: str | None
    op: str
    value: Any
    negate: bool = False


class FirstLastCondition(msgspec.Struct, frozen=True):
    """The user's first (or last) matching `event` ever falls inside `window`."""

    first: bool
    event: str
    where: tuple[PropertyFilter, ...]
    window: Window


class Step(msgspec.Struct, frozen=True):
    event: str
    where: tuple[PropertyFilter, ...]


class SequenceCondition(msgspec.Struct, frozen=True):
    """Some occurrence of each step in order, each strictly later than the one before,
    the last at most `gap_ms` after the first; all inside `window`."""

    steps: tuple[Step, ...]
    gap_ms: int
    window: Window | None


class AllOf(msgspec.Struct, frozen=True):
    items: tuple["Condition", ...]


class AnyOf(msgspec.Struct, frozen=True):
    items: tuple["Condition", ...]


class Not(msgspec.Struct, frozen=True):
    item: "Condition"


Condition = Union[ProfileCondition, EventCondition, FirstLastCondition, SequenceCondition, AllOf, AnyOf, Not]


def parse_segment(raw: Any, path: str = "segment") -> Condition:
    """A validated condition tree, or `SegmentError` naming what is wrong and where."""
    counter = [0]
    return _condition(raw, path, 0, counter)


def parse_duration(text: Any, path: str, allow_zero: bool = False) -> int:
    """'30m', '24h', '7d', '2w' -> milliseconds."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None or (int(match.group(1)) == 0 and not allow_zero):
        raise SegmentError(path, f"{text!r} is not a duration such as '30m', '24h', '7d' or '2w'")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_time_of_day(raw: Any, path: str) -> time:
    """'22:00' -> a wall-clock time (24-hour, minutes)."""
    match = _TIME_OF_DAY.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise SegmentError(path, "must be a local time of day 'HH:MM' (24-hour)")
    return time(int(match.group(1)), int(match.group(2)))


def parse_window(raw: Any, path: str) -> Window:
    """'7d' (the last 7 days), or {"from": ..., "to": ...} where each end is a duration
    ago ('60d'), 'now', a date ('2026-01-31', 20260131), an ISO datetime or epoch seconds."""
    if isinstance(raw, str):
        return Window(Bound(ago_ms=parse_duration(raw, path)), None)
    if not isinstance(raw, dict):
        raise SegmentError(path, "must be a duration such as '7d' or an object with 'from' and/or 'to'")
    no_extra_fields(raw, {"from", "to"}, path)
    if "from" not in raw and "to" not in raw:
        raise SegmentError(path, "needs 'from', 'to' or both")
    start = parse_bound(raw["from"], f"{path}.from") if "from" in raw else None
    end = parse_bound(raw["to"], f"{path}.to") if "to" in raw else None
    if start is not None and end is not None and _reversed(start, end):
        raise SegmentError(f"{path}.from", "is not before 'to': the window would be empty")
    return Window(start, end, end is not None and end.day is not None)


def _reversed(start: Bound, end: Bound) -> bool:
    """Whether two ends of the same kind leave nothing between them (a date `to` is inclusive)."""
    if start.ago_ms is not None and end.ago_ms is not None:
        return start.ago_ms <= end.ago_ms
    if start.at_ms is not None and end.at_ms is not None:
        return start.at_ms >= end.at_ms
    if start.day is not None and end.day is not None:
        return start.day > end.day
    return False


def parse_bound(raw: Any, path: str) -> Bound:
    if isinstance(raw, bool):
        raise SegmentError(path, "must be a duration ago, a date, an ISO datetime or epoch seconds")
    if isinstance(raw, int) and 19000101 <= raw <= 99991231:
        return Bound(day=_iso_day(str(raw), path))
    if isinstance(raw, (int, float)):
        if not _finite(raw) or not 0 <= raw < 253370764800:  # 9999-01-01
            raise SegmentError(path, f"{raw!r} is not epoch seconds between 1970 and 9999")
        return Bound(at_ms=int(round(raw * 1000)))
    if isinstance(raw, str):
        if raw == "now":
            return Bound(ago_ms=0)
        if _DURATION.match(raw):
            return Bound(ago_ms=parse_duration(raw, path, allow_zero=True))
        if len(raw) in (8, 10):
            return Bound(day=_iso_day(raw, path))
        return Bound(at_ms=parse_instant(raw, path))
    raise SegmentError(path, "must be a duration ago, a date, an ISO datetime or epoch seconds")


def _iso_day(text: str, path: str) -> str:
    try:
        day = date.fromisoformat(text if len(text) == 10 else f"{text[:4]}-{text[4:6]}-{text[6:]}")
    except ValueError:
        raise SegmentError(path, f"{text!r} is not a date (YYYY-MM-DD or YYYYMMDD)") from None
    # A date is resolved as midnight in any zone, and a `to` date as the next midnight:
    # keep both inside what datetime represents.
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise SegmentError(path, f"{text!r} is outside the years {FIRST_YEAR}-{LAST_YEAR}")
    return day.isoformat()


def parse_instant(text: str, path: str) -> int:
    """An ISO-8601 datetime with an offset (or Z) -> epoch milliseconds."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SegmentError(path, f"{text!r} is not an ISO-8601 datetime") from None
    if moment.tzinfo is None:
        raise SegmentError(path, f"{text!r} has no UTC offset; add one, e.g. 'Z' or '+05:30'")
    if not FIRST_YEAR <= moment.year <= LAST_YEAR:
        raise SegmentError(path, f"{text!r} is outside the years {FIRST_YEAR}-{LAST_YEAR}")
    return int(moment.astimezone(timezone.utc).timestamp() * 1000)


# --- conditions ----------------------------------------------------------------------

_KINDS = ("profile", "did", "did_not", "first_time", "last_time", "sequence", "all", "any", "not", "everyone")


def _condition(raw: Any, path: str, depth: int, counter: list[int]) -> Condition:
    if depth > MAX_DEPTH:
        raise SegmentError(path, f"conditions nest deeper than {MAX_DEPTH} levels")
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise SegmentError(path, f"a segment may hold at most {MAX_NODES} conditions")
    if not isinstance(raw, dict):
        raise SegmentError(path, f"must be an object with one of {', '.join(repr(k) for k in _KINDS)}")
    kinds = [k for k in _KINDS if k in raw]
    if len(kinds) != 1:
        found = f"both {kinds[0]!r} and {kinds[1]!r}" if kinds else "none"
        raise SegmentError(path, f"must have exactly one of {', '.join(repr(k) for k in _KINDS)} (found {found})")
    kind = kinds[0]
    if kind == "everyone":
        no_extra_fields(raw, {"everyone"}, path)
        if raw["everyone"] is not True:
            raise SegmentError(f"{path}.everyone", "must be true")
        return AllOf(())  # every live user
    if kind in ("all", "any"):
        no_extra_fields(raw, {kind}, path)
        items = raw[kind]
        if not isinstance(items, list) or not items:
            raise SegmentError(f"{path}.{kind}", "must be a non-empty list of conditions")
        parsed = tuple(_condition(c, f"{path}.{kind}[{i}]", depth + 1, counter) for i, c in enumerate(items))
        return AllOf(parsed) if kind == "all" else AnyOf(parsed)
    if kind == "not":
        no_extra_fields(raw, {"not"}, path)
        return Not(_condition(raw["not"], f"{path}.not", depth + 1, counter))
    if kind == "profile":
        no_extra_fields(raw, {"profile", "op", "value"}, path)
        return ProfileCondition(_filter(raw, "profile", path))
    if kind in ("did", "did_not"):
        return _event_condition(raw, kind, path)
    if kind in ("first_time", "last_time"):
        no_extra_fields(raw, {kind, "where", "within"}, path)
        if "within" not in raw:
            raise SegmentError(path, f"'{kind}' needs 'within': when the {kind.replace('_', ' ')} must fall")
        return FirstLastCondition(kind == "first_time", event_name(raw[kind], f"{path}.{kind}"),
                                  parse_where(raw.get("where"), f"{path}.where"), parse_window(raw["within"], f"{path}.within"))
    return _sequence(raw, path)


def _event_condition(raw: dict[str, Any], kind: str, path: str) -> EventCondition:
    allowed = {kind, "where", "within", "count", *METRICS[1:], "op", "value"}
    no_extra_fields(raw, allowed, path)
    event = event_name(raw[kind], f"{path}.{kind}")
    where = parse_where(raw.get("where"), f"{path}.where")
    window = parse_window(raw["within"], f"{path}.within") if "within" in raw else None
    aggregates = [m for m in METRICS[1:] if m in raw]
    if len(aggregates) > 1 or (aggregates and "count" in raw):
        raise SegmentError(path, "give one of 'count', 'sum', 'avg', 'min' or 'max', not several")
    if aggregates:
        metric = aggregates[0]
        prop = raw[metric]
        if not isinstance(prop, str) or not prop:
            raise SegmentError(f"{path}.{metric}", "must name a numeric event property")
        if "op" not in raw or "value" not in raw:
            raise SegmentError(path, f"'{metric}' needs 'op' and 'value' to compare it with")
        op, value = _comparison(raw["op"], raw["value"], path)
        return EventCondition(event, where, window, metric, prop, op, value, kind == "did_not")
    if "op" in raw or "value" in raw:
        raise SegmentError(path, "'op' and 'value' compare an aggregate: add 'sum', 'avg', 'min' or 'max', "
                                 "or put a count comparison under 'count'")
    if "count" in raw:
        count = raw["count"]
        if not isinstance(count, dict):
            raise SegmentError(f"{path}.count", "must be an object with 'op' and 'value'")
        no_extra_fields(count, {"op", "value"}, f"{path}.count")
        if "op" not in count or "value" not in count:
            raise SegmentError(f"{path}.count", "needs 'op' and 'value'")
        op, value = _comparison(count["op"], count["value"], f"{path}.count")
        return EventCondition(event, where, window, "count", None, op, value, kind == "did_not")
    return EventCondition(event, where, window, "count", None, "gte", 1, kind == "did_not")


def _sequence(raw: dict[str, Any], path: str) -> SequenceCondition:
    no_extra_fields(raw, {"sequence", "gap", "within"}, path)
    steps_raw = raw["sequence"]
    if not isinstance(steps_raw, list) or not 2 <= len(steps_raw) <= 10:
        raise SegmentError(f"{path}.sequence", "must be a list of 2 to 10 steps")
    steps = []
    for i, step in enumerate(steps_raw):
        step_path = f"{path}.sequence[{i}]"
        if isinstance(step, str):
            steps.append(Step(event_name(step, step_path), ()))
        elif isinstance(step, dict):
            no_extra_fields(step, {"event", "where"}, step_path)
            if "event" not in step:
                raise SegmentError(step_path, "needs 'event'")
            steps.append(Step(event_name(step["event"], f"{step_path}.event"), parse_where(step.get("where"), f"{step_path}.where")))
        else:
            raise SegmentError(step_path, "must be an event name or an object with 'event' and 'where'")
    if "gap" not in raw:
        raise SegmentError(path, "'sequence' needs 'gap': the longest time from the first step to the last")
    window = parse_window(raw["within"], f"{path}.within") if "within" in raw else None
    return SequenceCondition(tuple(steps), parse_duration(raw["gap"], f"{path}.gap"), window)


def event_name(raw: Any, path: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise SegmentError(path, "must be an event name")
    if len(raw) > MAX_TEXT_CHARS:
        raise SegmentError(path, f"is longer than {MAX_TEXT_CHARS} characters")
    return raw


def parse_where(raw: Any, path: str) -> tuple[PropertyFilter, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SegmentError(path, "must be a list of property filters")
    filters = []
    for i, item in enumerate(raw):
        item_path = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise SegmentError(item_path, "must be an object with 'property', 'op' and 'value'")
        no_extra_fields(item, {"property", "op", "value"}, item_path)
        filters.append(_filter(item, "property", item_path))
    return tuple(filters)


def _filter(raw: dict[str, Any], name_key: str, path: str) -> PropertyFilter:
    name = raw.get(name_key)
    if not isinstance(name, str) or not name:
        raise SegmentError(f"{path}.{name_key}", "must be a property name")
    if len(name) > MAX_TEXT_CHARS:
        raise SegmentError(f"{path}.{name_key}", f"is longer than {MAX_TEXT_CHARS} characters")
    op = raw.get("op")
    if op not in PROPERTY_OPS:
        raise SegmentError(f"{path}.op", f"{op!r} is not one of {', '.join(PROPERTY_OPS)}")
    value_path = f"{path}.value"
    if op in ("exists", "not_exists"):
        if "value" in raw:
            raise SegmentError(value_path, f"'{op}' takes no value")
        return PropertyFilter(name, op)
    if "value" not in raw:
        raise SegmentError(path, f"'{op}' needs a 'value'")
    value = raw["value"]
    if op in ("gt", "gte", "lt", "lte"):
        return PropertyFilter(name, op, _number(value, value_path))
    if op == "between":
        return PropertyFilter(name, op, _pair(value, value_path))
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or len(value) > MAX_LIST_VALUES:
            raise SegmentError(value_path, f"'{op}' needs a list of 1 to {MAX_LIST_VALUES} values")
        return PropertyFilter(name, op, tuple(_scalar(v, f"{value_path}[{i}]") for i, v in enumerate(value)))
    if op == "contains":
        if not isinstance(value, str) or not value:
            raise SegmentError(value_path, "'contains' needs a non-empty string")
        return PropertyFilter(name, op, _text(value, value_path))
    if op in ("before", "after"):
        return PropertyFilter(name, op, parse_bound(value, value_path))
    return PropertyFilter(name, op, _scalar(value, value_path))


def _comparison(op: Any, value: Any, path: str) -> tuple[str, Any]:
    if op not in COMPARE_OPS:
        raise SegmentError(f"{path}.op", f"{op!r} is not one of {', '.join(COMPARE_OPS)}")
    if op == "between":
        return op, _pair(value, f"{path}.value")
    return op, _number(value, f"{path}.value")


def _finite(value: Any) -> bool:
    """A number usable in a comparison: finite, and an int of at most 64 bits (larger
    ones would overflow on the way to float64, or carry more digits than any column)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -MAX_NUMBER < value < MAX_NUMBER
    return isinstance(value, float) and math.isfinite(value)


def _number(value: Any, path: str) -> float:
    if not _finite(value):
        raise SegmentError(path, f"{str(value)[:40]!r} is not a number (finite, at most 64-bit)")
    return value


def _pair(value: Any, path: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise SegmentError(path, "'between' needs [low, high]")
    low, high = _number(value[0], f"{path}[0]"), _number(value[1], f"{path}[1]")
    if low > high:
        raise SegmentError(path, f"low {low!r} is above high {high!r}")
    return low, high


def _scalar(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return _text(value, path)
    if isinstance(value, bool) or _finite(value):
        return value
    raise SegmentError(path, f"{str(value)[:40]!r} is not a string, boolean or number (finite, at most 64-bit)")


def _text(value: str, path: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise SegmentError(path, f"is longer than {MAX_TEXT_CHARS} characters")
    return value


def no_extra_fields(raw: dict[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(str(k) for k in raw if k not in allowed)
    if extra:
        raise SegmentError(f"{path}.{extra[0]}" if path else extra[0], f"is not a field here (allowed: {', '.join(sorted(allowed))})")
