"""Live segments: membership kept up to date as records are applied and as time passes,
with an entry or exit signal for every change.

After each flush, a shard hands over the users its batches touched; each live segment
of their account is evaluated for just those users (their rows, read through the
`prev` chain), never by rescanning the partition. Membership lives in one boolean
array per (account, segment, partition).

Time: a window such as "within 7d" changes a user's answer without any new record,
when one of their events leaves (or enters) it. For every member and non-member, the
next instant at which that can happen is kept in an array beside the membership (one
timer structure, no task per user); `tick` re-evaluates the users whose instant has
come. The instant is found from the user's events named in conditions with relative
window ends (event time + window, for each such end), and from profile dates compared
with relative ends: an upper bound on how long the answer stays valid, so at worst a
user is re-evaluated and found unchanged.
"""

from __future__ import annotations

import logging
from typing import Iterable, NamedTuple

import msgspec
import numpy as np

from kairos.segments.catalog import SavedSegment
from kairos.segments.definition import (
    AllOf, AnyOf, Bound, Condition, EventCondition, FirstLastCondition, Not, ProfileCondition, PropertyFilter,
    SegmentError, SequenceCondition, Window,
)
from kairos.segments.evaluate import StoreQuery
from kairos.segments.timing import UTC
from kairos.store.account_store import AccountStore
from kairos.store.partition import PartitionState

NEVER = np.iinfo(np.int64).max
logger = logging.getLogger(__name__)


class Signal(msgspec.Struct, array_like=True, frozen=True):
    """A user entered (or left) a live segment at `at_ms`; `user` is the canonical user."""

    account: str
    segment: str
    version: int
    user: str
    entered: bool
    at_ms: int


class Horizons(NamedTuple):
    """What makes a condition depend on time: (event name, ms ago) pairs of relative
    window ends, (profile property, ms ago) pairs of relative date filters, and
    (event name, event property, ms ago) triples of relative date filters on events."""

    events: tuple[tuple[str, int], ...]
    profile: tuple[tuple[str, int], ...]
    event_dates: tuple[tuple[str, str, int], ...] = ()


def _relative(flt: PropertyFilter) -> int | None:
    bound = flt.value
    if flt.op in ("before", "after") and isinstance(bound, Bound) and bound.ago_ms is not None:
        return bound.ago_ms
    return None


def horizons(condition: Condition) -> Horizons:
    events: set[tuple[str, int]] = set()
    profile: set[tuple[str, int]] = set()
    event_dates: set[tuple[str, str, int]] = set()

    def dated(event: str, where: tuple[PropertyFilter, ...]) -> None:
        for flt in where:
            ago = _relative(flt)
            if ago is not None:
                event_dates.add((event, flt.name, ago))

    def ends(window: Window | None) -> list[int]:
        if window is None:
            return []
        return [b.ago_ms for b in (window.start, window.end) if b is not None and b.ago_ms is not None]

    def walk(c: Condition) -> None:
        if isinstance(c, (AllOf, AnyOf)):
            for item in c.items:
                walk(item)
        elif isinstance(c, Not):
            walk(c.item)
        elif isinstance(c, ProfileCondition):
            ago = _relative(c.filter)
            if ago is not None:
                profile.add((c.filter.name, ago))
        elif isinstance(c, (EventCondition, FirstLastCondition)):
            events.update((c.event, ago) for ago in ends(c.window))
            dated(c.event, c.where)
        else:
            assert isinstance(c, SequenceCondition)
            events.update((step.event, ago) for step in c.steps for ago in ends(c.window))
            for step in c.steps:
                dated(step.event, step.where)

    walk(condition)
    return Horizons(tuple(sorted(events)), tuple(sorted(profile)), tuple(sorted(event_dates)))


class _Live(NamedTuple):
    saved: SavedSegment
    condition: Condition
    horizons: Horizons


class _State:
    """One live segment's membership in one partition, by user slot."""

    __slots__ = ("members", "due")

    def __init__(self) -> None:
        self.members = np.zeros(0, dtype=bool)
        self.due = np.zeros(0, dtype=np.int64)

    def fit(self, size: int) -> None:
        if self.members.size < size:
            grow = max(size, 2 * self.members.size)
            self.members = np.concatenate([self.members, np.zeros(grow - self.members.size, dtype=bool)])
            self.due = np.concatenate([self.due, np.full(grow - self.due.size, NEVER, dtype=np.int64)])


class LiveSegments:
    def __init__(self) -> None:
        self._segments: dict[str, dict[str, _Live]] = {}  # account -> name -> definition
        self._state: dict[tuple[str, str, int], _State] = {}  # (account, name, partition)

    @property
    def any(self) -> bool:
        """Whether any account has a live segment (if not, a flush has nothing to do here)."""
        return bool(self._segments)

    def definitions(self, account: str) -> dict[str, int]:
        return {name: live.saved.version for name, live in self._segments.get(account, {}).items()}

    def set_segments(self, account: str, saved: Iterable[SavedSegment], states: dict[int, PartitionState],
                     now_ms: int) -> None:
        """The account's live segments are now `saved`. A new segment, or a new version,
        starts from a full evaluation and signals nothing: only changes from here on do."""
        old = self._segments.get(account, {})
        new: dict[str, _Live] = {}
        for segment in saved:
            if segment.live:
                try:
                    condition = segment.condition()
                except SegmentError:
                    # Saved by an older version whose rules were looser: skipped, not fatal.
                    logger.exception("live segment %r of %s cannot be parsed; skipped", segment.name, account)
                    continue
                new[segment.name] = _Live(segment, condition, horizons(condition))
        for name in old:
            if name not in new or new[name].saved.version != old[name].saved.version:
                for partition in states:
                    self._state.pop((account, name, partition), None)
        if new:
            self._segments[account] = new
        else:
            self._segments.pop(account, None)
        for partition, state in states.items():
            if new:
                state.watched.add(account)
            else:
                state.watched.discard(account)
            store = state.account(account)
            for name, live in new.items():
                key = (account, name, partition)
                if key not in self._state:
                    self._state[key] = _State()
                    if store is not None and store.user_count:
                        everyone = np.arange(store.user_count, dtype=np.int64)
                        self._guarded(account, live, partition, store, everyone, now_ms, StoreQuery(store, now_ms, UTC),
                                      signal=False)

    def members(self, account: str, name: str, partition: int, size: int) -> np.ndarray:
        state = self._state.get((account, name, partition))
        if state is None:
            return np.zeros(size, dtype=bool)
        state.fit(size)
        return state.members[:size].copy()

    def after_apply(self, states: dict[int, PartitionState], now_ms: int) -> list[Signal]:
        """Re-evaluate the users the last applied entries touched."""
        signals: list[Signal] = []
        for partition, state in states.items():
            for account, keys in state.take_touched().items():
                store = state.account(account)
                segments = self._segments.get(account)
                if store is None or not segments:
                    continue
                index = store.user_index
                slots = np.unique(np.asarray([index[k] for k in keys if k in index], dtype=np.int64))
                if not slots.size:
                    continue
                # One scope (the touched users' rows) serves every segment of the account.
                query = StoreQuery(store, now_ms, UTC, only_users=slots)
                for live in segments.values():
                    signals += self._guarded(account, live, partition, store, slots, now_ms, query)
        return signals

    def tick(self, states: dict[int, PartitionState], now_ms: int) -> list[Signal]:
        """Re-evaluate the users whose answer may have changed with time."""
        signals: list[Signal] = []
        for (account, name, partition), state in list(self._state.items()):
            due = np.flatnonzero(state.due <= now_ms)
            store = states[partition].account(account) if partition in states else None
            if not due.size or store is None:
                continue
            live = self._segments[account][name]
            signals += self._guarded(account, live, partition, store, due, now_ms,
                                     StoreQuery(store, now_ms, UTC, only_users=due))
        return signals

    def _guarded(self, account: str, live: _Live, partition: int, store: AccountStore, slots: np.ndarray,
                 now_ms: int, query: StoreQuery, signal: bool = True) -> list[Signal]:
        """`_evaluate`, where one segment's failure is logged and leaves the others (and the
        shard) working; its users are tried again when next touched or due."""
        try:
            return self._evaluate(account, live, partition, store, slots, now_ms, query, signal)
        except Exception:
            logger.exception("live segment %r of %s failed to evaluate", live.saved.name, account)
            return []

    def _evaluate(self, account: str, live: _Live, partition: int, store: AccountStore, slots: np.ndarray,
                  now_ms: int, query: StoreQuery, signal: bool = True) -> list[Signal]:
        """Re-evaluate `slots` with `query` (which sees at least their rows)."""
        state = self._state[(account, live.saved.name, partition)]
        state.fit(store.user_count)
        now_in = query.users(live.condition)[slots]
        was_in = state.members[slots]
        state.members[slots] = now_in
        state.due[slots] = _next_change(query, live.horizons, slots, now_ms)
        if not signal:
            return []
        changed = np.flatnonzero(now_in != was_in)
        keys = store.user_keys
        return [
            Signal(account, live.saved.name, live.saved.version, keys[int(slots[i])], bool(now_in[i]), now_ms)
            for i in changed.tolist()
        ]


def _next_change(query: StoreQuery, horizons: Horizons, slots: np.ndarray, now_ms: int) -> np.ndarray:
    """For each slot, the first instant after `now_ms` at which the answer may change."""
    due = np.full(query.size, NEVER, dtype=np.int64)
    for event, ago in horizons.events:
        rows = query.select(event, -NEVER, NEVER)
        instants = rows.ts + (ago + 1)
        later = instants > now_ms
        np.minimum.at(due, rows.users[later], instants[later])
    for event, prop, ago in horizons.event_dates:
        rows = query.select(event, -NEVER, NEVER)
        tags, values = query.values_at(rows, prop)
        dates = query.dates_of(tags, values)
        known = ~np.isnan(dates)
        instants = np.floor(dates[known]).astype(np.int64) + ago + 1
        later = instants > now_ms
        np.minimum.at(due, rows.users[known][later], instants[later])
    for name, ago in horizons.profile:
        code = query.store.codec.strings.find(name)
        column = query.store.profile.get(code) if code is not None else None
        if column is None or not len(column.tags):
            continue
        held = np.minimum(slots, len(column.tags) - 1)
        dates = query.dates_of(column.tags.values[held], column.values.values[held])
        dates[slots >= len(column.tags)] = np.nan
        known = ~np.isnan(dates)
        instants = np.full(slots.size, NEVER, dtype=np.int64)
        instants[known] = np.floor(dates[known]).astype(np.int64) + ago + 1
        later = instants > now_ms
        np.minimum.at(due, slots[later], instants[later])
    return due[slots]
