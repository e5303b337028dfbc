"""A shard's part of CleverTap's downloads and counts (`/1/events.json`,
`/1/profiles.json`, `/1/counts/...`), on the segment engine: the events named
`event_name` in [from, to) that pass the event filters, of users who pass the profile
filters; and the profiles of users with at least one such event."""

from __future__ import annotations

from typing import Any, Iterable

import msgspec
import numpy as np

from kairos.segments.definition import parse_segment, parse_where
from kairos.segments.evaluate import EventRows, StoreQuery
from kairos.segments.timing import UTC
from kairos.store.account_store import AccountStore
from kairos.store.partition import PartitionState


class ExportQuery(msgspec.Struct, frozen=True, array_like=True):
    event_name: str
    from_ms: int
    to_ms: int
    where: list[Any] = []  # event filters, in the segment language
    profile: Any = None  # a segment definition over profile properties, or None


def _events(store: AccountStore, query: ExportQuery) -> EventRows:
    """The matching events of live users, rows ascending."""
    sq = StoreQuery(store, query.to_ms, UTC)
    selected = sq.matching(query.event_name, parse_where(query.where, "event_properties"), query.from_ms, query.to_ms)
    users = sq.live if query.profile is None else sq.users(parse_segment(query.profile))
    return selected.where(users[selected.users]) if selected.rows.size else selected


def _profiles(store: AccountStore, query: ExportQuery) -> np.ndarray:
    """User slots (ascending) with at least one matching event."""
    selected = _events(store, query)
    return np.unique(selected.users)


def count_events(states: Iterable[PartitionState], account: str, query: ExportQuery) -> int:
    stores = (s.account(account) for s in states)
    return sum(int(_events(store, query).rows.size) for store in stores if store is not None)


def export_events(state: PartitionState, account: str, query: ExportQuery, start: int,
                  limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """Up to `limit` events of one partition from row `start` on, and the row to resume
    from (None when the partition is done)."""
    store = state.account(account)
    if store is None:
        return [], None
    rows = _events(store, query).rows
    rows = rows[np.searchsorted(rows, start):]
    page = rows[:limit]
    return store.event_records(page), int(page[-1]) + 1 if rows.size > limit else None


def count_profiles(states: Iterable[PartitionState], account: str, query: ExportQuery) -> int:
    stores = (s.account(account) for s in states)
    return sum(int(_profiles(store, query).size) for store in stores if store is not None)


def export_profiles(state: PartitionState, account: str, query: ExportQuery, start: int,
                    limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """Up to `limit` profiles from user slot `start` on, and the slot to resume from.
    Paging by slot, not position, so users who qualify between pages neither shift nor
    repeat the ones already returned."""
    store = state.account(account)
    if store is None:
        return [], None
    users = _profiles(store, query)
    users = users[np.searchsorted(users, start):]
    page = users[:limit]
    return [store.profile_record(int(u)) for u in page], int(page[-1]) + 1 if users.size > limit else None
