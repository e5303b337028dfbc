"""A shard's part of a segment query, over the partitions it owns. Users live in
exactly one partition, so the coordinator adds counts and concatenates pages: the
totals are exact."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from kairos.segments.definition import Condition
from kairos.segments.evaluate import StoreQuery
from kairos.segments.timing import zone
from kairos.store.partition import PartitionState


def segment_count(states: Iterable[PartitionState], account: str, condition: Condition, now_ms: int, tz: str) -> int:
    total = 0
    for state in states:
        store = state.account(account)
        if store is not None and store.user_count:
            total += int(np.count_nonzero(StoreQuery(store, now_ms, zone(tz)).users(condition)))
    return total


def segment_members(
    state: PartitionState, account: str, condition: Condition, now_ms: int, tz: str, start: int, limit: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to `limit` members from user slot `start` on (profile without the event
    summary), and the slot to resume from; None when the partition is done. Slots only
    grow, so paging never repeats or skips a user who stays a member."""
    store = state.account(account)
    if store is None or start >= store.user_count:
        return [], None
    mask = StoreQuery(store, now_ms, zone(tz)).users(condition)
    slots = np.flatnonzero(mask[start:]) + start
    page = slots[:limit]
    records = [store.profile_record(int(u), with_events=False) for u in page]
    return records, int(page[-1]) + 1 if slots.size > limit else None
