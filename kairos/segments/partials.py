"""A shard's part of a segment query, over the partitions it owns. Users live in
exactly one partition, so the coordinator adds counts and concatenates pages: the
totals are exact."""

from __future__ import annotations

from typing import Any, Callable, Iterable

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


def users_matching(
    states: dict[int, PartitionState], partition_of: Callable[[str], int], account: str, condition: Condition,
    users: list[str], now_ms: int, tz: str,
) -> list[bool]:
    """Whether each user (a canonical key) meets the condition now; evaluated over just
    those users' rows, so it costs what they did, not what the partition holds."""
    answers = [False] * len(users)
    by_partition: dict[int, list[int]] = {}
    for i, user in enumerate(users):
        by_partition.setdefault(partition_of(user), []).append(i)
    for partition, positions in by_partition.items():
        store = states[partition].account(account)
        if store is None:
            continue
        slots = [(i, store.find_user(users[i])) for i in positions]
        known = [(i, s) for i, s in slots if s is not None]
        if not known:
            continue
        scope = np.asarray(sorted({s for _, s in known}), dtype=np.int64)
        mask = StoreQuery(store, now_ms, zone(tz), only_users=scope).users(condition)
        for i, slot in known:
            answers[i] = bool(mask[slot])
    return answers


def segment_user_keys(state: PartitionState, account: str, condition: Condition, now_ms: int, tz: str) -> list[str]:
    """The canonical keys of the partition's members."""
    store = state.account(account)
    if store is None or not store.user_count:
        return []
    mask = StoreQuery(store, now_ms, zone(tz)).users(condition)
    return [store.user_keys[int(u)] for u in np.flatnonzero(mask)]
