"""Trends, funnels, retention and RFM read row by row from the reference account, with
calendars from `datetime` alone: what the column engine must equal exactly."""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from kairos.segments.definition import Condition, Step
from tests.unit.segment_reference import RefAccount, RefEvent, RefUser, all_match, holds, window

DAY = 86_400_000


def users_of(ref: RefAccount, segment: Condition | None, now: int, tz: ZoneInfo) -> dict[str, RefUser]:
    return {k: u for k, u in ref.users.items() if segment is None or holds(segment, u, now, tz)}


def step_events(user: RefUser, step: Step, lo: float, hi: float, now: int, tz: ZoneInfo) -> list[RefEvent]:
    return [e for e in user.events if e.name == step.event and lo <= e.ts < hi and all_match(e, step.where, now, tz)]


def label(ts: int, unit: str, tz: ZoneInfo) -> str:
    local = datetime.fromtimestamp(ts / 1000, tz)
    if unit == "hour":
        return local.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:00%z")
    day = local.date()
    return (day - timedelta(days=day.weekday()) if unit == "week" else day).isoformat()


def trend(ref: RefAccount, q: Any, now: int, tz: ZoneInfo) -> dict[Any, Any]:
    lo, hi = window(q.window, now, tz)
    totals: dict[Any, Any] = {}
    seen: set[tuple[Any, str]] = set()
    for key, user in users_of(ref, q.segment, now, tz).items():
        for e in step_events(user, q.step, lo, hi, now, tz):
            group = label(e.ts, q.by, tz) if q.by != "property" else _group(e.props.get(q.by_property))
            if q.measure == "count":
                totals[group] = totals.get(group, 0) + 1
            elif q.measure == "users":
                if (group, key) not in seen:
                    seen.add((group, key))
                    totals[group] = totals.get(group, 0) + 1
            else:
                v = e.props.get(q.sum_of)
                if (type(v) is int and abs(v) < 2**53) or type(v) is float:
                    totals[group] = totals.get(group, 0.0) + float(v)
                else:
                    totals.setdefault(group, 0.0)
    return totals


def _group(v: Any) -> Any:
    return ("b", v) if type(v) is bool else ("n", float(v)) if type(v) in (int, float) else ("s", v) if type(v) is str else ("null", None)


def funnel(ref: RefAccount, q: Any, now: int, tz: ZoneInfo) -> list[tuple[int, float | None, float | None]]:
    lo, hi = window(q.window, now, tz)
    reached: list[list[tuple[int, int]]] = [[] for _ in q.steps]  # per step: (from previous, from entry)
    for user in users_of(ref, q.segment, now, tz).values():
        starts = [e.ts for e in step_events(user, q.steps[0], lo, hi, now, tz)]
        if not starts:
            continue
        entry = at = min(starts)
        reached[0].append((0, 0))
        for i, step in enumerate(q.steps[1:], 1):
            later = [e.ts for e in step_events(user, step, -float("inf"), float("inf"), now, tz)
                     if e.ts > at and e.ts - entry <= q.conversion_ms]
            if not later:
                break
            following = min(later)
            reached[i].append((following - at, following - entry))
            at = following
    out = []
    for i, times in enumerate(reached):
        med_prev = statistics.median([t[0] for t in times]) / 1000 if i and times else None
        med_entry = statistics.median([t[1] for t in times]) / 1000 if i and times else None
        out.append((len(times), med_prev, med_entry))
    return out


def retention(ref: RefAccount, q: Any, now: int, tz: ZoneInfo) -> dict[str, tuple[int, list[int]]]:
    lo, hi = window(q.window, now, tz)
    cohorts: dict[str, tuple[int, list[int]]] = {}
    for user in users_of(ref, q.segment, now, tz).values():
        firsts = [e.ts for e in step_events(user, q.first, -float("inf"), float("inf"), now, tz)]
        if not firsts or not lo <= min(firsts) < hi:
            continue
        first = min(firsts)
        cohort = label(first, q.by, tz)
        size, kept = cohorts.get(cohort, (0, [0] * q.periods))
        periods = set()
        for e in step_events(user, q.back, first, float("inf"), now, tz):
            days = (datetime.fromisoformat(label(e.ts, q.by, tz)) - datetime.fromisoformat(cohort)).days
            n = days // 7 if q.by == "week" else days
            if n < q.periods:
                periods.add(n)
        for n in periods:
            kept[n] += 1
        cohorts[cohort] = (size + 1, kept)
    return cohorts


GRID = {  # (recency score, frequency score) -> segment, cell by cell
    **{(r, f): "Hibernating" for r in (1, 2) for f in (1, 2)},
    **{(r, f): "At Risk" for r in (1, 2) for f in (3, 4)},
    **{(r, 5): "Can't Lose Them" for r in (1, 2)},
    (3, 1): "About to Sleep", (3, 2): "About to Sleep", (3, 3): "Need Attention",
    **{(r, f): "Loyal" for r in (3, 4) for f in (4, 5)},
    (4, 1): "Promising", (5, 1): "New",
    **{(r, f): "Potential Loyalists" for r in (4, 5) for f in (2, 3)},
    (5, 4): "Champions", (5, 5): "Champions",
}


def rfm(ref: RefAccount, q: Any, now: int, tz: ZoneInfo) -> dict[str, tuple[int, float]]:
    lo, hi = window(q.window, now, tz)
    rows = []
    for user in users_of(ref, q.segment, now, tz).values():
        events = step_events(user, q.step, lo, hi, now, tz)
        if not events:
            continue
        money = sum(float(e.props[q.monetary]) for e in events
                    if q.monetary and ((type(e.props.get(q.monetary)) is int) or type(e.props.get(q.monetary)) is float))
        rows.append(((int(hi) - 1 - max(e.ts for e in events)) // DAY, len(events), money))
    n = len(rows)
    out: dict[str, tuple[int, float]] = {}
    for recency, frequency, money in rows:
        r = min(5, 1 + 5 * sum(1 for other in rows if other[0] > recency) // n)
        f = min(5, 1 + 5 * sum(1 for other in rows if other[1] < frequency) // n)
        count, total = out.get(GRID[(r, f)], (0, 0.0))
        out[GRID[(r, f)]] = (count + 1, total + money)
    return out
