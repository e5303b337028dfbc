"""RFM: recency, frequency and monetary value over one event in a date range, scored 1-5
and mapped to CleverTap's ten segments.

Users who did the event in [from, to) are scored. Recency is whole days from their
last such event to `to`; frequency is how many they did; monetary is the sum of the
`monetary` property. A score is the user's percentile rank - the share of users with
a strictly worse value - as 1 + floor(5 x rank): ties share a score.

One round over the shards keeps it exact without moving users: a user's scores depend
only on their (recency, frequency) pair, so each partition answers with its cells -
per pair, the users, and their monetary sum - and the coordinator derives the scores
from the cells' totals, then adds the cells up per segment.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from kairos.analytics.common import DAY_MS, Scope, date_range
from kairos.analytics.queries import RfmQuery

SEGMENTS = ("Champions", "Loyal", "Potential Loyalists", "New", "Promising", "Need Attention", "About to Sleep",
            "Can't Lose Them", "At Risk", "Hibernating")

# A cell: [recency days, frequency, users, monetary sum].
Cell = list[Any]


def segment_of(r: int, f: int) -> str:
    """(recency score, frequency score) -> segment: the usual RFM grid."""
    if r <= 2:
        return "Hibernating" if f <= 2 else "At Risk" if f <= 4 else "Can't Lose Them"
    if r == 3:
        return "About to Sleep" if f <= 2 else "Need Attention" if f == 3 else "Loyal"
    if f >= 4:
        return "Loyal" if r == 4 else "Champions"
    if f == 1:
        return "Promising" if r == 4 else "New"
    return "Potential Loyalists"


def rfm_partial(scope: Scope, query: RfmQuery, now_ms: int, tz: ZoneInfo) -> list[Cell]:
    from_ms, to_ms = date_range(query.window, now_ms, tz)
    events = scope.events(query.step, from_ms, to_ms)
    size = scope.size
    frequency = np.bincount(events.users, minlength=size)[:size]
    users = np.flatnonzero(frequency)
    if not users.size:
        return []
    last = np.full(size, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, events.users, events.ts)
    recency = (to_ms - 1 - last[users]) // DAY_MS
    frequency = frequency[users]
    if query.monetary is not None:
        has, numbers = scope.query.numeric(events, query.monetary)
        monetary = np.bincount(events.users[has], weights=numbers[has], minlength=size)[:size][users]
    else:
        monetary = np.zeros(users.size)
    span = int(frequency.max()) + 1
    cells, group = np.unique(recency * span + frequency, return_inverse=True)
    counts = np.bincount(group, minlength=cells.size)
    money = np.bincount(group, weights=monetary, minlength=cells.size)
    return [[int(c // span), int(c % span), int(n), float(m)] for c, n, m in zip(cells.tolist(), counts, money)]


def _scores(counts: dict[int, int], better_low: bool) -> dict[int, int]:
    """Each value's score from how many users hold each value."""
    total = sum(counts.values())
    worse, scored = 0, {}
    # From the worst value up: `worse` counts the users strictly worse than `value`.
    for value in sorted(counts, reverse=better_low):
        scored[value] = min(5, 1 + (5 * worse) // total)
        worse += counts[value]
    return scored


def combine_rfm(parts: list[list[Cell]]) -> dict[str, Any]:
    cells: dict[tuple[int, int], list[float]] = {}
    for part in parts:
        for recency, frequency, users, money in part:
            held = cells.setdefault((recency, frequency), [0, 0.0])
            held[0] += users
            held[1] += money
    by_recency: dict[int, int] = {}
    by_frequency: dict[int, int] = {}
    for (recency, frequency), (users, _) in cells.items():
        by_recency[recency] = by_recency.get(recency, 0) + int(users)
        by_frequency[frequency] = by_frequency.get(frequency, 0) + int(users)
    r_score, f_score = _scores(by_recency, better_low=True), _scores(by_frequency, better_low=False)
    totals = {name: [0, 0.0, 0, 0] for name in SEGMENTS}  # users, monetary, recency sum, frequency sum
    grid: dict[str, int] = {}
    for (recency, frequency), (users, money) in sorted(cells.items()):
        r, f = r_score[recency], f_score[frequency]
        held = totals[segment_of(r, f)]
        held[0] += int(users)
        held[1] += money
        held[2] += recency * int(users)
        held[3] += frequency * int(users)
        grid[f"{r},{f}"] = grid.get(f"{r},{f}", 0) + int(users)
    everyone = sum(int(t[0]) for t in totals.values())
    segments = []
    for name in SEGMENTS:
        n, money, recency_sum, frequency_sum = totals[name]
        segments.append({
            "segment": name, "users": int(n), "share": n / everyone if everyone else 0.0,
            "monetary_sum": money, "avg_monetary": money / n if n else None,
            "avg_recency_days": recency_sum / n if n else None, "avg_frequency": frequency_sum / n if n else None,
        })
    return {"users": everyone, "segments": segments, "grid": dict(sorted(grid.items()))}
