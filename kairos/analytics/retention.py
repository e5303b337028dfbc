"""Retention: cohorts by the first time users did A, and who came back to do B.

A user's cohort is the calendar day (or ISO week) in the query's time zone of their
first A ever, counted if it falls inside [from, to). They are retained in period n
if they did B in the n-th day (week) after their cohort's: in the cohort's own
period, only B at or after that first A counts.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from kairos.analytics.common import DAY_MS, Scope, calendar, date_range
from kairos.analytics.queries import RetentionQuery
from kairos.segments.definition import SegmentError
from kairos.segments.timing import Calendar

_NEVER = np.iinfo(np.int64).max


# Cohorts x periods: bounds the answer's size and the work a query asks of the shards.
MAX_CELLS = 50_000


def retention_calendar(query: RetentionQuery, now_ms: int, tz: ZoneInfo) -> tuple[int, int, Calendar]:
    from_ms, to_ms = date_range(query.window, now_ms, tz)
    length = DAY_MS if query.by == "day" else 7 * DAY_MS
    cohorts = (to_ms - from_ms) // length + 1
    if cohorts * (query.periods + 1) > MAX_CELLS:
        raise SegmentError("periods", f"{cohorts} {query.by}ly cohorts x {query.periods} periods is over "
                                      f"{MAX_CELLS} cells: shorten the range or ask for fewer periods")
    # Room for every cohort's last period; +2 covers daylight-saving's longer days.
    return from_ms, to_ms, calendar(query.by, from_ms, to_ms + (query.periods + 2) * length, tz)


def retention_partial(scope: Scope, query: RetentionQuery, now_ms: int, tz: ZoneInfo) -> list[list[int]]:
    """Per cohort bucket: [cohort size, retained in period 0, 1, ...]."""
    from_ms, to_ms, cal = retention_calendar(query, now_ms, tz)
    every_first = scope.events(query.first, -_NEVER, _NEVER)
    first = np.full(scope.size, _NEVER, dtype=np.int64)
    np.minimum.at(first, every_first.users, every_first.ts)
    in_cohort = (first >= from_ms) & (first < to_ms)
    cohort_of = np.full(scope.size, -1, dtype=np.int64)
    cohort_of[in_cohort] = cal.index(first[in_cohort])
    cohorts = int(cal.index(np.asarray([to_ms - 1]))[0]) + 1
    table = np.zeros((cohorts, query.periods + 1), dtype=np.int64)
    np.add.at(table[:, 0], cohort_of[in_cohort], 1)
    back = scope.events(query.back, from_ms, cal_end(cal))
    users = back.users
    keep = in_cohort[users] & (back.ts >= first[users])
    users, period = users[keep], cal.index(back.ts[keep]) - cohort_of[users[keep]]
    keep = period < query.periods
    pairs = np.unique(users[keep] * np.int64(query.periods) + period[keep])
    retained_users, retained_period = pairs // query.periods, pairs % query.periods
    np.add.at(table, (cohort_of[retained_users], retained_period + 1), 1)
    return table.tolist()


def cal_end(cal: Calendar) -> int:
    return int(cal.starts[-1]) if len(cal) else _NEVER


def combine_retention(parts: list[list[list[int]]], query: RetentionQuery, now_ms: int,
                      tz: ZoneInfo) -> dict[str, Any]:
    from_ms, to_ms, cal = retention_calendar(query, now_ms, tz)
    cohorts_in_range = int(cal.index(np.asarray([to_ms - 1]))[0]) + 1
    table = np.zeros((cohorts_in_range, query.periods + 1), dtype=np.int64)
    for part in parts:
        table += np.asarray(part, dtype=np.int64).reshape(-1, query.periods + 1)
    cohorts = [
        {"cohort": cal.label(i), "users": int(row[0]), "retained": [int(v) for v in row[1:]]}
        for i, row in enumerate(table.tolist())
    ]
    overall = [int(v) for v in table[:, 1:].sum(axis=0)]
    return {"by": query.by, "cohorts": cohorts, "users": int(table[:, 0].sum()), "retained": overall}
