"""RFM: recency, frequency and monetary value over one event in a date range, scored 1-5
and mapped to CleverTap's ten segments.

Users who did the event in [from, to) are scored. Recency is whole days from their
last such event to `to`; frequency is how many they did; monetary is the sum of the
`monetary` property. A score is the user's percentile rank - the share of users with
a strictly worse value - as 1 + floor(5 x rank): ties share a score.

Two rounds over the shards keep it exact without moving users: first the histograms
of recency and frequency (small integers), from which the coordinator derives each
value's score; then each shard scores its users and returns per-segment totals.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from kairos.analytics.common import DAY_MS, Scope, date_range
from kairos.analytics.queries import RfmQuery

# (recency score, frequency score) -> segment: the usual RFM grid.
SEGMENTS = ("Champions", "Loyal", "Potential Loyalists", "New", "Promising", "Need Attention", "About to Sleep",
            "Can't Lose Them", "At Risk", "Hibernating")


def segment_of(r: int, f: int) -> str:
    if r <= 2:
        return "Hibernating" if f <= 2 else "At Risk" if f <= 4 else "Can't Lose Them"
    if r == 3:
        return "About to Sleep" if f <= 2 else "Need Attention" if f == 3 else "Loyal"
    if f >= 4:
        return "Loyal" if r == 4 else "Champions"
    if f == 1:
        return "Promising" if r == 4 else "New"
    return "Potential Loyalists"


class Measures:
    def __init__(self, scope: Scope, query: RfmQuery, now_ms: int, tz: ZoneInfo) -> None:
        from_ms, to_ms = date_range(query.window, now_ms, tz)
        events = scope.events(query.step, from_ms, to_ms)
        size = scope.size
        self.frequency = np.bincount(events.users, minlength=size)[:size]
        last = np.full(size, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, events.users, events.ts)
        self.users = np.flatnonzero(self.frequency)
        self.recency = (to_ms - 1 - last[self.users]) // DAY_MS
        self.frequency = self.frequency[self.users]
        if query.monetary is not None:
            has, numbers = scope.query.numeric(events, query.monetary)
            self.monetary = np.bincount(events.users[has], weights=numbers[has], minlength=size)[:size][self.users]
        else:
            self.monetary = np.zeros(self.users.size)


def rfm_histograms(scope: Scope, query: RfmQuery, now_ms: int, tz: ZoneInfo) -> dict[str, dict[int, int]]:
    m = Measures(scope, query, now_ms, tz)
    return {"recency": _histogram(m.recency), "frequency": _histogram(m.frequency)}


def _histogram(values: np.ndarray) -> dict[int, int]:
    unique, counts = np.unique(values, return_counts=True)
    return dict(zip(unique.tolist(), counts.tolist()))


def combine_histograms(parts: list[dict[str, dict[int, int]]]) -> dict[str, dict[int, int]]:
    """Each recency and frequency value's score, from every shard's histogram."""
    scores = {}
    for measure, better_low in (("recency", True), ("frequency", False)):
        counts: dict[int, int] = {}
        for part in parts:
            for value, n in part[measure].items():
                counts[int(value)] = counts.get(int(value), 0) + n
        total = sum(counts.values())
        worse = 0
        scored = {}
        # From the worst value up: `worse` counts the users strictly worse than `value`.
        for value in sorted(counts, reverse=better_low):
            scored[value] = min(5, 1 + (5 * worse) // total)
            worse += counts[value]
        scores[measure] = scored
    return scores


_GRID = np.array([[SEGMENTS.index(segment_of(r, f)) if r and f else -1 for f in range(6)] for r in range(6)])


def _scores(values: np.ndarray, table: dict[int, int]) -> np.ndarray:
    keys = np.asarray(sorted(int(k) for k in table), dtype=np.int64)
    scores = np.asarray([table[k] if k in table else table[str(k)] for k in keys.tolist()], dtype=np.int64)
    return scores[np.searchsorted(keys, values)]


def rfm_segments(scope: Scope, query: RfmQuery, now_ms: int, tz: ZoneInfo,
                 scores: dict[str, dict[int, int]]) -> dict[str, list[float]]:
    """Per segment: [users, monetary sum, recency sum, frequency sum]; per grid cell 'r,f': users."""
    m = Measures(scope, query, now_ms, tz)
    if not m.users.size:
        return {}
    r, f = _scores(m.recency, scores["recency"]), _scores(m.frequency, scores["frequency"])
    segment = _GRID[r, f]
    n = len(SEGMENTS)
    users = np.bincount(segment, minlength=n)
    money = np.bincount(segment, weights=m.monetary, minlength=n)
    recency = np.bincount(segment, weights=m.recency, minlength=n)
    frequency = np.bincount(segment, weights=m.frequency, minlength=n)
    out: dict[str, list[float]] = {
        SEGMENTS[i]: [int(users[i]), float(money[i]), int(recency[i]), int(frequency[i])]
        for i in range(n) if users[i]
    }
    cells = np.bincount(r * 6 + f, minlength=36)
    for cell in np.flatnonzero(cells).tolist():
        out[f"{cell // 6},{cell % 6}"] = [int(cells[cell]), 0.0, 0, 0]
    return out


def combine_segments(parts: list[dict[str, list[float]]]) -> dict[str, Any]:
    totals: dict[str, list[float]] = {}
    for part in parts:
        for key, values in part.items():
            held = totals.setdefault(key, [0, 0.0, 0, 0])
            for i, v in enumerate(values):
                held[i] += v
    users = sum(totals.get(name, [0])[0] for name in SEGMENTS)
    segments = []
    for name in SEGMENTS:
        n, money, recency, frequency = totals.get(name, [0, 0.0, 0, 0])
        segments.append({
            "segment": name, "users": int(n), "share": n / users if users else 0.0,
            "monetary_sum": money, "avg_monetary": money / n if n else None,
            "avg_recency_days": recency / n if n else None, "avg_frequency": frequency / n if n else None,
        })
    grid = {key: int(values[0]) for key, values in sorted(totals.items()) if "," in key}
    return {"users": int(users), "segments": segments, "grid": grid}
