"""A campaign's results per variant, exact, from its users' events.

A user is exposed by their first `Notification Sent` of the campaign (or, in the
control group, `Notification Held Out`: the moment they would have been sent it), and
belongs to that event's variant. A user converts when they do the goal event
(matching its filters) after one of their exposures and within the goal's window of
it. Delivered, viewed and clicked count the exposed users with at least one such
event of the campaign. Every figure is a count of users, so partitions add up.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from kairos.routing.delivery_events import CLICKED, DELIVERED, HELD_OUT, SENT, VIEWED
from kairos.segments.definition import parse_where
from kairos.segments.evaluate import EventRows, StoreQuery
from kairos.store.columns import TAG_STR

ENGAGEMENT = {"delivered": DELIVERED, "viewed": VIEWED, "clicked": CLICKED}
FIGURES = ("exposed", "delivered", "viewed", "clicked", "converted")
_ALL_TIME = (-np.iinfo(np.int64).max, np.iinfo(np.int64).max)


class ResultsQuery(msgspec.Struct, frozen=True, array_like=True):
    campaign: str  # the campaign's id, as its events carry it
    goal_event: str | None = None
    goal_where: list[Any] = []  # in the segment language, as written
    goal_within_ms: int = 0


def results_partial(query: StoreQuery, results: ResultsQuery) -> dict[str, list[int]]:
    """variant -> [exposed, delivered, viewed, clicked, converted], for one partition."""
    of_campaign = parse_where([{"property": "Campaign", "op": "eq", "value": results.campaign}], "campaign")
    exposures = _concat([query.matching(SENT, of_campaign, *_ALL_TIME), query.matching(HELD_OUT, of_campaign, *_ALL_TIME)])
    if not exposures.rows.size:
        return {}
    live = query.live[exposures.users]
    exposures = exposures.where(live)
    labels = _variants(query, exposures)
    # Each user's first exposure names their variant.
    order = np.lexsort((exposures.ts, exposures.users))
    users_sorted, ts_sorted = exposures.users[order], exposures.ts[order]
    first = np.ones(users_sorted.size, dtype=bool)
    first[1:] = users_sorted[1:] != users_sorted[:-1]
    exposed_users = users_sorted[first]
    variant_of = np.full(query.size, -1, dtype=np.int64)
    variant_of[exposed_users] = labels.codes[order][first]
    out = {name: [0] * len(FIGURES) for name in labels.names}
    _add(out, labels.names, variant_of, exposed_users, 0)
    for index, (_, event) in enumerate(ENGAGEMENT.items(), start=1):
        engaged = query.matching(event, of_campaign, *_ALL_TIME)
        _add(out, labels.names, variant_of, np.unique(engaged.users), index)
    if results.goal_event is not None:
        goals = query.matching(results.goal_event, parse_where(results.goal_where, "conversion_goal.where"),
                               int(ts_sorted.min()) + 1, int(ts_sorted.max()) + results.goal_within_ms + 1)
        converted = _converted(users_sorted, ts_sorted, goals, results.goal_within_ms, query.size)
        _add(out, labels.names, variant_of, converted, len(FIGURES) - 1)
    return out


def combine_results(parts: list[dict[str, list[int]]]) -> dict[str, dict[str, int]]:
    totals: dict[str, list[int]] = {}
    for part in parts:
        for variant, figures in part.items():
            held = totals.setdefault(variant, [0] * len(FIGURES))
            for i, value in enumerate(figures):
                held[i] += value
    return {variant: dict(zip(FIGURES, figures)) for variant, figures in sorted(totals.items())}


class _Labels(msgspec.Struct):
    names: list[str]
    codes: np.ndarray  # per exposure row: its index in `names`


def _variants(query: StoreQuery, rows: EventRows) -> _Labels:
    tags, values = query.values_at(rows, "Variant")
    codes = np.where(tags == TAG_STR, values, -1.0).astype(np.int64)
    unique, inverse = np.unique(codes, return_inverse=True)
    strings = query.store.codec.strings.values
    names = [strings[int(code)] if code >= 0 else "-" for code in unique]
    return _Labels(names, inverse.reshape(-1).astype(np.int64))


def _add(out: dict[str, list[int]], names: list[str], variant_of: np.ndarray, users: np.ndarray, figure: int) -> None:
    variants = variant_of[users]
    counts = np.bincount(variants[variants >= 0], minlength=len(names))
    for name, count in zip(names, counts.tolist()):
        out[name][figure] += count


def _converted(users_sorted: np.ndarray, ts_sorted: np.ndarray, goals: EventRows, within_ms: int,
               size: int) -> np.ndarray:
    """Users with a goal event after one of their exposures, within `within_ms` of it: for
    each goal event, the latest exposure of its user strictly before it decides."""
    if not goals.rows.size:
        return np.empty(0, dtype=np.int64)
    # One sortable key per (user, time): users numbered densely, times from the earliest.
    dense = np.full(size, -1, dtype=np.int64)
    distinct = np.unique(users_sorted)
    dense[distinct] = np.arange(distinct.size)
    t0 = int(ts_sorted.min())
    span = int(max(ts_sorted.max(), goals.ts.max())) - t0 + 1
    if span * max(distinct.size, 1) >= 2**62:
        raise ValueError("the campaign's events span too long a time to attribute")
    exposure_keys = dense[users_sorted] * span + (ts_sorted - t0)  # ascending: sorted by user, then time
    exposed = dense[goals.users] >= 0
    goal_users, goal_ts = goals.users[exposed], goals.ts[exposed]
    goal_keys = dense[goal_users] * span + (goal_ts - t0)
    before = np.searchsorted(exposure_keys, goal_keys, side="left") - 1
    ok = before >= 0
    ok[ok] = (users_sorted[before[ok]] == goal_users[ok]) & (goal_ts[ok] - ts_sorted[before[ok]] <= within_ms)
    return np.unique(goal_users[ok])


def _concat(parts: list[EventRows]) -> EventRows:
    """The rows of all `parts`, ascending (as property lookups need them)."""
    rows = np.concatenate([p.rows for p in parts])
    order = np.argsort(rows, kind="stable")
    return EventRows(rows[order], np.concatenate([p.users for p in parts])[order],
                     np.concatenate([p.ts for p in parts])[order])
