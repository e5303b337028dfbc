"""A plain-Python model of an account and a row-by-row reading of the segment
semantics: what the columnar engine must agree with exactly. Written independently of
kairos.segments.evaluate (no numpy, no columns), loop by loop as the README states it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from kairos.segments.definition import (
    AllOf, AnyOf, Bound, Condition, EventCondition, FirstLastCondition, Not, ProfileCondition, PropertyFilter,
    SequenceCondition, Window,
)

INF = float("inf")


@dataclass
class RefEvent:
    name: str
    ts: int
    props: dict[str, Any]


@dataclass
class RefUser:
    events: list[RefEvent] = field(default_factory=list)
    props: dict[str, tuple[Any, int]] = field(default_factory=dict)  # name -> (value, write time)


class RefAccount:
    def __init__(self) -> None:
        self.users: dict[str, RefUser] = {}
        self.merged: set[str] = set()

    def event(self, user: str, name: str, ts: int, props: dict[str, Any]) -> None:
        self.users.setdefault(user, RefUser()).events.append(RefEvent(name, ts, props))

    def profile(self, user: str, ts: int, props: dict[str, Any]) -> None:
        target = self.users.setdefault(user, RefUser())
        for key, value in props.items():
            target.props[key] = (value, ts)  # in log order: the last write wins

    def merge(self, source: str, into: str) -> None:
        """`source`'s events join `into`; per property, the later write time wins."""
        moved = self.users.pop(source, RefUser())
        target = self.users.setdefault(into, RefUser())
        target.events.extend(moved.events)
        for key, (value, ts) in moved.props.items():
            if key not in target.props or ts > target.props[key][1]:
                target.props[key] = (value, ts)
        self.merged.add(source)

    def members(self, condition: Condition, now_ms: int, tz: ZoneInfo) -> set[str]:
        return {key for key, user in self.users.items() if holds(condition, user, now_ms, tz)}


# --- semantics ------------------------------------------------------------------------

def holds(c: Condition, user: RefUser, now: int, tz: ZoneInfo) -> bool:
    if isinstance(c, AllOf):
        return all(holds(i, user, now, tz) for i in c.items)
    if isinstance(c, AnyOf):
        return any(holds(i, user, now, tz) for i in c.items)
    if isinstance(c, Not):
        return not holds(c.item, user, now, tz)
    if isinstance(c, ProfileCondition):
        value = user.props.get(c.filter.name, (None, 0))[0]
        return matches(value, c.filter, now, tz)
    if isinstance(c, EventCondition):
        lo, hi = window(c.window, now, tz)
        hits = [e for e in user.events if e.name == c.event and lo <= e.ts < hi and all_match(e, c.where, now, tz)]
        if c.metric == "count":
            result = compared(len(hits), c.op, c.value)
        else:
            numbers = [float(e.props[c.metric_property]) for e in hits if is_number(e.props.get(c.metric_property))]
            if not numbers:
                result = False
            else:
                total = {"sum": sum(numbers), "avg": sum(numbers) / len(numbers), "min": min(numbers),
                         "max": max(numbers)}[c.metric]
                result = compared(total, c.op, c.value)
        return not result if c.negate else result
    if isinstance(c, FirstLastCondition):
        times = [e.ts for e in user.events if e.name == c.event and all_match(e, c.where, now, tz)]
        if not times:
            return False
        moment = min(times) if c.first else max(times)
        lo, hi = window(c.window, now, tz)
        return lo <= moment < hi
    assert isinstance(c, SequenceCondition)
    lo, hi = window(c.window, now, tz)
    occurrences = [
        sorted(e.ts for e in user.events if e.name == s.event and lo <= e.ts < hi and all_match(e, s.where, now, tz))
        for s in c.steps
    ]
    # Chains as (first time, last time), extended step by step: exhaustive, no cleverness.
    chains = [(t, t) for t in occurrences[0]]
    for times in occurrences[1:]:
        chains = [(first, t) for first, last in chains for t in times if t > last and t - first <= c.gap_ms]
        chains = list(set(chains))
    return bool(chains)


def all_match(event: RefEvent, where: tuple[PropertyFilter, ...], now: int, tz: ZoneInfo) -> bool:
    return all(matches(event.props.get(f.name), f, now, tz) for f in where)


def is_number(v: Any) -> bool:
    return (type(v) is int and abs(v) < 2**53) or type(v) is float


def equal(v: Any, operand: Any) -> bool:
    if type(operand) is bool:
        return type(v) is bool and v == operand
    if type(operand) is str:
        return type(v) is str and v == operand
    return is_number(v) and float(v) == float(operand)


def matches(v: Any, f: PropertyFilter, now: int, tz: ZoneInfo) -> bool:
    present = v is not None
    if f.op == "exists":
        return present
    if f.op == "not_exists":
        return not present
    if f.op in ("gt", "gte", "lt", "lte", "between"):
        return is_number(v) and compared(float(v), f.op, f.value)
    if f.op == "eq":
        return equal(v, f.value)
    if f.op == "ne":
        return present and not equal(v, f.value)
    if f.op == "in":
        return any(equal(v, o) for o in f.value)
    if f.op == "not_in":
        return present and not any(equal(v, o) for o in f.value)
    if f.op == "contains":
        return type(v) is str and f.value.casefold() in v.casefold()
    moment = as_date_ms(v)
    if moment is None:
        return False
    bound = bound_ms(f.value, now, tz, False)
    return moment < bound if f.op == "before" else moment > bound


def compared(x: float, op: str, operand: Any) -> bool:
    if op == "between":
        return operand[0] <= x <= operand[1]
    return {"eq": x == operand, "ne": x != operand, "gt": x > operand, "gte": x >= operand,
            "lt": x < operand, "lte": x <= operand}[op]


def as_date_ms(v: Any) -> float | None:
    if is_number(v):
        return float(v) * 1000
    if type(v) is not str:
        return None
    match = re.fullmatch(r"\$D_(-?\d+)", v)
    if match:
        return int(match.group(1)) * 1000.0
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        return float(datetime.fromisoformat(v + "T00:00:00+00:00").timestamp() * 1000)
    return None


def bound_ms(b: Bound, now: int, tz: ZoneInfo, end_of_day: bool) -> int:
    if b.ago_ms is not None:
        return now - b.ago_ms
    if b.at_ms is not None:
        return b.at_ms
    day = date.fromisoformat(b.day) + (timedelta(days=1) if end_of_day else timedelta())
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def window(w: Window | None, now: int, tz: ZoneInfo) -> tuple[float, float]:
    if w is None:
        return -INF, INF
    lo = bound_ms(w.start, now, tz, False) if w.start else -INF
    hi = bound_ms(w.end, now, tz, w.end_inclusive_day) if w.end else INF
    return lo, hi
