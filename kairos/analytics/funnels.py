"""Funnels: ordered steps within a conversion window.

A user enters at their first step-1 event inside [from, to). Each later step is the
user's first event of that step strictly after the previous step's, at most `window`
after the entry (later steps may fall after `to`). Per step: users who reached it,
conversion from the previous step and from the first, and the median time from the
previous step and from entry.

Each step is one pass over its events (minimum per user), no sort: O(events).
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from kairos.analytics.common import Scope, date_range
from kairos.analytics.queries import FunnelQuery

_NEVER = np.iinfo(np.int64).max


def funnel_partial(scope: Scope, query: FunnelQuery, now_ms: int, tz: ZoneInfo) -> dict[str, Any]:
    """Per step: users reaching it, and their times (ms) from the previous step and from entry."""
    from_ms, to_ms = date_range(query.window, now_ms, tz)
    first = scope.events(query.steps[0], from_ms, to_ms)
    entry = np.full(scope.size, _NEVER, dtype=np.int64)
    np.minimum.at(entry, first.users, first.ts)
    reached = entry < _NEVER
    at = entry.copy()
    counts = [int(reached.sum())]
    from_previous: list[np.ndarray] = [np.empty(0, np.int64)]
    from_entry: list[np.ndarray] = [np.empty(0, np.int64)]
    horizon = to_ms + query.conversion_ms  # no step can count after this
    for step in query.steps[1:]:
        events = scope.events(step, from_ms, min(horizon, _NEVER))
        users = events.users
        ok = reached[users] & (events.ts > at[users]) & (events.ts - entry[users] <= query.conversion_ms)
        following = np.full(scope.size, _NEVER, dtype=np.int64)
        np.minimum.at(following, users[ok], events.ts[ok])
        now_reached = following < _NEVER
        from_previous.append((following - at)[now_reached])
        from_entry.append((following - entry)[now_reached])
        counts.append(int(now_reached.sum()))
        reached, at = now_reached, following
    return {"counts": counts, "from_previous": from_previous, "from_entry": from_entry}


def combine_funnel(parts: list[dict[str, Any]], query: FunnelQuery) -> list[dict[str, Any]]:
    steps = []
    totals = [sum(p["counts"][i] for p in parts) for i in range(len(query.steps))]
    for i, step in enumerate(query.steps):
        previous = np.concatenate([np.empty(0, np.int64)] + [p["from_previous"][i] for p in parts])
        entry = np.concatenate([np.empty(0, np.int64)] + [p["from_entry"][i] for p in parts])
        steps.append({
            "event": step.event,
            "users": totals[i],
            "conversion_from_previous": _ratio(totals[i], totals[i - 1]) if i else 1.0 if totals[0] else 0.0,
            "conversion_from_first": _ratio(totals[i], totals[0]),
            "median_seconds_from_previous": _median_s(previous) if i else None,
            "median_seconds_from_entry": _median_s(entry) if i else None,
        })
    return steps


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _median_s(times_ms: np.ndarray) -> float | None:
    """The median (the mean of the middle two for an even count), in seconds."""
    return float(np.median(times_ms)) / 1000.0 if times_ms.size else None
