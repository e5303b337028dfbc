"""Trends: an event's count, unique users, or the sum of a numeric property, per hour,
day or week in a time zone, or per value of a property.

Users live in one partition each, so per-bucket unique users add up across
partitions exactly, like counts and sums.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from kairos.analytics.common import Scope, calendar, date_range
from kairos.analytics.queries import TrendQuery
from kairos.store.columns import TAG_FLOAT, TAG_INT, TAG_MISSING, TAG_NULL, TAG_STR

# A property value as a key that JSON and dicts agree on (True and 1 stay apart).
Key = tuple[str, Any]


def trend_partial(scope: Scope, query: TrendQuery, now_ms: int, tz: ZoneInfo) -> Any:
    """Per calendar bucket, a list of values; per property value, a list of [kind, value, measure]."""
    from_ms, to_ms = date_range(query.window, now_ms, tz)
    events = scope.events(query.step, from_ms, to_ms)
    if query.by == "property":
        assert query.by_property is not None
        tags, values = scope.query.values_at(events, query.by_property)
        tags = np.where(tags == TAG_NULL, TAG_MISSING, tags)
        tags = np.where(tags == TAG_INT, TAG_FLOAT, tags)  # 3 and 3.0 are one value
        pairs = np.stack([tags.astype(np.float64), values], axis=1)
        unique, group = np.unique(pairs, axis=0, return_inverse=True) if pairs.size else (np.empty((0, 2)), np.empty(0, np.int64))
        group = group.reshape(-1)
        measured = _measure(scope, query, events, group, len(unique))
        codec = scope.query.store.codec
        out = []
        for (tag, value), amount in zip(unique.tolist(), measured):
            tag = int(tag)
            key = ("null", None) if tag == TAG_MISSING else _key(tag, codec.decode(tag, value))
            out.append([key[0], key[1], amount])
        return out
    cal = calendar(query.by, from_ms, to_ms, tz)
    return _measure(scope, query, events, cal.index(events.ts), len(cal))


def _key(tag: int, value: Any) -> Key:
    if tag == TAG_STR:
        return ("s", value)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", int(value) if float(value).is_integer() and abs(value) < 2**53 else value)
    return ("j", value)  # lists and objects: keyed by their JSON


def _measure(scope: Scope, query: TrendQuery, events: Any, group: np.ndarray, groups: int) -> list[Any]:
    if query.measure == "count":
        return np.bincount(group, minlength=groups)[:groups].tolist()
    if query.measure == "users":
        pairs = np.unique(group * np.int64(scope.size + 1) + events.users)
        return np.bincount(pairs // (scope.size + 1), minlength=groups)[:groups].tolist()
    assert query.sum_of is not None
    has, numbers = scope.query.numeric(events, query.sum_of)
    return np.bincount(group[has], weights=numbers[has], minlength=groups)[:groups].tolist()


def combine_trend(parts: list[Any], query: TrendQuery, now_ms: int, tz: ZoneInfo) -> list[dict[str, Any]]:
    if query.by == "property":
        totals: dict[tuple[str, str], tuple[Any, Any]] = {}
        for part in parts:
            for kind, value, amount in part:
                # Composite values compare by their JSON text.
                marker = (kind, repr(value))
                held = totals.get(marker)
                totals[marker] = (value, amount if held is None else held[1] + amount)
        rows = [{"key": value, "value": amount} for value, amount in totals.values()]
        return sorted(rows, key=lambda r: (-r["value"], repr(r["key"])))
    from_ms, to_ms = date_range(query.window, now_ms, tz)
    cal = calendar(query.by, from_ms, to_ms, tz)
    values = np.zeros(len(cal))
    for part in parts:
        values = values + np.asarray(part, dtype=np.float64)
    cast = float if query.measure == "sum" else int
    return [{"key": cal.label(i), "value": cast(v)} for i, v in enumerate(values.tolist())]
