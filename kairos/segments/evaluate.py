"""Evaluates segment conditions over one account's columns in one partition.

Every condition becomes a boolean mask over the store's user slots, computed with
whole-column numpy operations: no Python loop runs per event or per user. Event
conditions select rows by name and time chunk by chunk, filter them through the
sparse property columns, and reduce per user with bincount / minimum.at. Users merged
away (sealed) are never members.

A `StoreQuery` can also be scoped to a few users (`only_users`): the same operations
then run over just those users' rows, read through the per-user `prev` chain, which is
how live segments re-evaluate the users a batch touched without a scan.
"""

from __future__ import annotations

from typing import NamedTuple
from zoneinfo import ZoneInfo

import numpy as np

from kairos.segments.definition import (
    AllOf, AnyOf, Condition, EventCondition, FirstLastCondition, Not, ProfileCondition, PropertyFilter,
    SequenceCondition,
)
from kairos.segments.timing import date_value_ms, resolve_bound, resolve_window
from kairos.store.account_store import AccountStore, SparseValues
from kairos.store.columns import TAG_BOOL, TAG_FLOAT, TAG_INT, TAG_MISSING, TAG_NULL, TAG_STR

# Past this many events in one touched user's history, their rows are found by a scan.
MAX_CHAIN_STEPS = 2048


class EventRows(NamedTuple):
    rows: np.ndarray  # global row numbers, ascending
    users: np.ndarray
    ts: np.ndarray

    def where(self, keep: np.ndarray) -> "EventRows":
        return EventRows(self.rows[keep], self.users[keep], self.ts[keep])


def compare(values: np.ndarray, op: str, operand: object) -> np.ndarray:
    """`values op operand` elementwise, for the comparison operators."""
    if op == "between":
        low, high = operand  # type: ignore[misc]
        return (values >= low) & (values <= high)
    if op == "eq":
        return values == operand
    if op == "ne":
        return values != operand
    if op == "gt":
        return values > operand
    if op == "gte":
        return values >= operand
    if op == "lt":
        return values < operand
    assert op == "lte", op
    return values <= operand


class StoreQuery:
    def __init__(self, store: AccountStore, now_ms: int, tz: ZoneInfo, only_users: np.ndarray | None = None) -> None:
        self.store = store
        self.now_ms = now_ms
        self.tz = tz
        self.size = store.user_count
        self.live = store.live.values[: self.size].copy()
        self._strings = store.codec.strings
        self._dates: dict[int, float] = {}
        self._scope: np.ndarray | None = None
        if only_users is not None:
            self._scope = user_rows(store, only_users)

    # --- conditions ------------------------------------------------------------------

    def users(self, condition: Condition) -> np.ndarray:
        """Mask over user slots: live users meeting `condition`."""
        kind = type(condition)
        if kind is AllOf:
            mask = self.live.copy()
            for item in condition.items:  # type: ignore[union-attr]
                mask &= self.users(item)
            return mask
        if kind is AnyOf:
            mask = np.zeros(self.size, dtype=bool)
            for item in condition.items:  # type: ignore[union-attr]
                mask |= self.users(item)
            return mask
        if kind is Not:
            return ~self.users(condition.item) & self.live  # type: ignore[union-attr]
        if kind is ProfileCondition:
            return self._profile(condition.filter) & self.live  # type: ignore[union-attr]
        if kind is EventCondition:
            return self._event(condition) & self.live  # type: ignore[arg-type]
        if kind is FirstLastCondition:
            return self._first_last(condition) & self.live  # type: ignore[arg-type]
        assert kind is SequenceCondition, kind
        return self._sequence(condition) & self.live  # type: ignore[arg-type]

    def _event(self, condition: EventCondition) -> np.ndarray:
        from_ms, to_ms = resolve_window(condition.window, self.now_ms, self.tz)
        selected = self.matching(condition.event, condition.where, from_ms, to_ms)
        if condition.metric == "count":
            counts = np.bincount(selected.users, minlength=self.size)[: self.size]
            mask = compare(counts, condition.op, condition.value)
        else:
            assert condition.metric_property is not None
            has, numbers = self.numeric(selected, condition.metric_property)
            users, numbers = selected.users[has], numbers[has]
            carrying = np.bincount(users, minlength=self.size)[: self.size] > 0
            if condition.metric in ("sum", "avg"):
                totals = np.bincount(users, weights=numbers, minlength=self.size)[: self.size]
                if condition.metric == "avg":
                    counts = np.bincount(users, minlength=self.size)[: self.size]
                    totals = totals / np.maximum(counts, 1)
            else:
                fill = np.inf if condition.metric == "min" else -np.inf
                totals = np.full(self.size, fill)
                reduce = np.minimum if condition.metric == "min" else np.maximum
                reduce.at(totals, users, numbers)
            mask = carrying & compare(totals, condition.op, condition.value)
        return ~mask if condition.negate else mask

    def _first_last(self, condition: FirstLastCondition) -> np.ndarray:
        every = self.matching(condition.event, condition.where, -np.iinfo(np.int64).max, np.iinfo(np.int64).max)
        from_ms, to_ms = resolve_window(condition.window, self.now_ms, self.tz)
        if condition.first:
            moment = np.full(self.size, np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(moment, every.users, every.ts)
        else:
            moment = np.full(self.size, np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(moment, every.users, every.ts)
        return (moment >= from_ms) & (moment < to_ms)

    def _sequence(self, condition: SequenceCondition) -> np.ndarray:
        """Keep, for each occurrence of a step, the latest first-step time of any valid
        chain ending there: the latest start leaves the most room for `gap`.

        Times are replaced by their rank among the steps' distinct times (order is all
        the search needs), so (user, time) keys stay small whatever the span of time."""
        from_ms, to_ms = resolve_window(condition.window, self.now_ms, self.tz)
        steps = [self.matching(s.event, s.where, from_ms, to_ms) for s in condition.steps]
        if any(step.rows.size == 0 for step in steps):
            return np.zeros(self.size, dtype=bool)
        times, ranks = np.unique(np.concatenate([step.ts for step in steps]), return_inverse=True)
        ranks = ranks.reshape(-1) + 1  # 0 stays free for "no chain"
        bounds = np.cumsum([0] + [step.rows.size for step in steps])
        rank_of = [ranks[bounds[i]:bounds[i + 1]] for i in range(len(steps))]
        span = times.size + 1
        users_max = int(max(step.users.max() for step in steps)) + 1
        if span * (users_max + 1) >= 1 << 62:
            raise ValueError("too many distinct times and users for one sequence key")
        previous, previous_rank = steps[0], rank_of[0]
        start = previous_rank  # the chain's first time, as a rank
        for step, step_rank in zip(steps[1:], rank_of[1:]):
            if not previous.rows.size:
                break
            order = np.lexsort((previous_rank, previous.users))
            users, ranked, starts = previous.users[order], previous_rank[order], start[order]
            keys = users * span + ranked
            # Best start among the user's earlier occurrences: a running max that cannot
            # leak across users, since each user's values sit above all earlier users'.
            best = np.maximum.accumulate(users * span + starts)
            at = np.searchsorted(keys, step.users * span + step_rank, side="left") - 1
            found = at >= 0
            at = np.maximum(at, 0)
            found &= users[at] == step.users
            chain_start = np.where(found, best[at] - step.users * span, 0)
            valid = found & (chain_start > 0)
            valid[valid] = step.ts[valid] - times[chain_start[valid] - 1] <= condition.gap_ms
            previous, previous_rank, start = step.where(valid), step_rank[valid], chain_start[valid]
        mask = np.zeros(self.size, dtype=bool)
        mask[previous.users] = True
        return mask

    # --- events ----------------------------------------------------------------------

    def matching(self, event: str, where: tuple[PropertyFilter, ...], from_ms: int, to_ms: int) -> EventRows:
        selected = self.select(event, from_ms, to_ms)
        for flt in where:
            if not selected.rows.size:
                break
            selected = selected.where(self.rows_matching(selected, flt))
        return selected

    def select(self, event: str, from_ms: int, to_ms: int) -> EventRows:
        """Rows of events named `event` with from_ms <= ts < to_ms."""
        store = self.store
        code = self._strings.find(event)
        if code is None:
            return _no_rows()
        if self._scope is not None:
            rows = self._scope
            names, stamps = store.ev_name.take(rows), store.ev_ts.take(rows)
            keep = (names == code) & (stamps >= from_ms) & (stamps < to_ms)
            return EventRows(rows[keep], store.ev_user.take(rows[keep]).astype(np.int64), stamps[keep])
        parts_rows, parts_users, parts_ts = [], [], []
        chunks = zip(store.ev_name.chunks(), store.ev_ts.chunks(), store.ev_user.chunks())
        for (offset, names), (_, stamps), (_, users) in chunks:
            hit = names == code
            if from_ms > -np.iinfo(np.int64).max:
                hit &= stamps >= from_ms
            if to_ms < np.iinfo(np.int64).max:
                hit &= stamps < to_ms
            found = np.flatnonzero(hit)
            parts_rows.append(found + offset)
            parts_users.append(users[found])
            parts_ts.append(stamps[found])
        if not parts_rows:
            return _no_rows()
        return EventRows(np.concatenate(parts_rows).astype(np.int64), np.concatenate(parts_users).astype(np.int64),
                         np.concatenate(parts_ts))

    def _entries_at(self, column: SparseValues, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each of `rows`: whether the property is set there, and its tag and value."""
        size = len(column.rows)
        if rows.size * 8 > size:
            # Many rows: spread the property over a dense row mask, chunk by chunk.
            position = np.full(self.store.event_count, -1, dtype=np.int64)
            for start, r in column.rows.chunks():
                position[r] = np.arange(start, start + r.size)
            at = position[rows]
            found = at >= 0
        else:
            at = column.rows.searchsorted(rows)
            found = at < size
            found[found] = column.rows.take(at[found]) == rows[found]
        tags = np.full(rows.size, TAG_MISSING, dtype=np.int8)
        values = np.zeros(rows.size, dtype=np.float64)
        if found.any():
            tags[found] = column.tags.take(at[found])
            values[found] = column.values.take(at[found])
        return found, tags, values

    def rows_matching(self, selected: EventRows, flt: PropertyFilter) -> np.ndarray:
        code = self._strings.find(flt.name)
        column = self.store.ev_props.get(code) if code is not None else None
        if column is None:
            return np.full(selected.rows.size, flt.op == "not_exists")
        _, tags, values = self._entries_at(column, selected.rows)
        return self.match(tags, values, flt)

    def values_at(self, selected: EventRows, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The (tag, value) of property `name` at each selected row (TAG_MISSING where unset)."""
        code = self._strings.find(name)
        column = self.store.ev_props.get(code) if code is not None else None
        if column is None:
            return np.full(selected.rows.size, TAG_MISSING, dtype=np.int8), np.zeros(selected.rows.size)
        _, tags, values = self._entries_at(column, selected.rows)
        return tags, values

    def numeric(self, selected: EventRows, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Which selected rows carry `name` as a number, and the numbers."""
        tags, values = self.values_at(selected, name)
        return _numeric(tags), values

    # --- profiles --------------------------------------------------------------------

    def _profile(self, flt: PropertyFilter) -> np.ndarray:
        code = self._strings.find(flt.name)
        column = self.store.profile.get(code) if code is not None else None
        if column is not None and len(column.tags) >= self.size:
            # Every user has a slot in the column: match on it in place, no copy.
            return self.match(column.tags.values[: self.size], column.values.values[: self.size], flt)
        tags = np.full(self.size, TAG_MISSING, dtype=np.int8)
        values = np.zeros(self.size, dtype=np.float64)
        if column is not None:
            held = len(column.tags)
            tags[:held] = column.tags.values[:held]
            values[:held] = column.values.values[:held]
        return self.match(tags, values, flt)

    # --- values ----------------------------------------------------------------------

    def match(self, tags: np.ndarray, values: np.ndarray, flt: PropertyFilter) -> np.ndarray:
        """Which (tag, value) entries satisfy the filter; the semantics are the README's.
        Each operator computes only the masks it needs: these run over every user."""
        op, operand = flt.op, flt.value
        if op in ("exists", "not_exists"):
            present = _present(tags)
            return present if op == "exists" else ~present
        if op in ("gt", "gte", "lt", "lte", "between"):
            return _numeric(tags) & compare(values, op, operand)
        if op in ("eq", "ne"):
            equal = self._equal(tags, values, operand)
            return equal if op == "eq" else _present(tags) & ~equal
        if op in ("in", "not_in"):
            hit = self._in(tags, values, operand)
            return hit if op == "in" else _present(tags) & ~hit
        if op == "contains":
            strings = tags == TAG_STR
            codes = np.unique(values[strings]).astype(np.int64)
            needle = str(operand).casefold()
            table = self._strings.values
            wanted = [c for c in codes.tolist() if needle in table[c].casefold()]
            return strings & np.isin(values, np.asarray(wanted, dtype=np.float64))
        assert op in ("before", "after"), op
        moment = self.dates_of(tags, values)
        bound = resolve_bound(operand, self.now_ms, self.tz)
        with np.errstate(invalid="ignore"):
            return moment < bound if op == "before" else moment > bound

    def _in(self, tags: np.ndarray, values: np.ndarray, operands: tuple[object, ...]) -> np.ndarray:
        """Equal to any operand: one pass per kind of value, however long the list."""
        codes = [c for c in (self._strings.find(o) for o in operands if isinstance(o, str)) if c is not None]
        numbers = [float(o) for o in operands if not isinstance(o, (str, bool))]
        flags = [float(o) for o in operands if isinstance(o, bool)]
        hit = np.zeros(tags.size, dtype=bool)
        if codes:
            hit |= np.isin(values, np.asarray(codes, dtype=np.float64)) & (tags == TAG_STR)
        if numbers:
            hit |= np.isin(values, np.asarray(numbers)) & _numeric(tags)
        if flags:
            hit |= np.isin(values, np.asarray(flags)) & (tags == TAG_BOOL)
        return hit

    def _equal(self, tags: np.ndarray, values: np.ndarray, operand: object) -> np.ndarray:
        if isinstance(operand, bool):
            return (values == float(operand)) & (tags == TAG_BOOL)
        if isinstance(operand, str):
            code = self._strings.find(operand)
            if code is None:
                return np.zeros(tags.size, dtype=bool)
            return (values == code) & (tags == TAG_STR)
        return (values == operand) & _numeric(tags)

    def dates_of(self, tags: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Each entry as a date in epoch ms (NaN where it is none)."""
        moment = np.full(tags.size, np.nan)
        numeric = (tags == TAG_INT) | (tags == TAG_FLOAT)
        moment[numeric] = values[numeric] * 1000.0
        strings = tags == TAG_STR
        if strings.any():
            codes = values[strings].astype(np.int64)
            unique, inverse = np.unique(codes, return_inverse=True)
            table = self._strings.values
            parsed = np.array([self._dates.setdefault(c, date_value_ms(table[c])) for c in unique.tolist()])
            moment[strings] = parsed[inverse]
        return moment


def _present(tags: np.ndarray) -> np.ndarray:
    return (tags != TAG_MISSING) & (tags != TAG_NULL)


def _numeric(tags: np.ndarray) -> np.ndarray:
    return (tags == TAG_INT) | (tags == TAG_FLOAT)


def user_rows(store: AccountStore, users: np.ndarray) -> np.ndarray:
    """Every event row of the given users, ascending: their `prev` chains walked side by
    side, one numpy step per event of the longest history."""
    found: list[np.ndarray] = []
    rows = store.last_row.values[np.asarray(users, dtype=np.int64)].astype(np.int64)
    rows = rows[rows >= 0]
    steps = 0
    while rows.size:
        steps += 1
        if steps > MAX_CHAIN_STEPS:
            # A history this long (a bot, a server-side user) is cheaper to find by one
            # pass over the user column than step by step.
            return _scan_user_rows(store, users)
        found.append(rows)
        rows = store.ev_prev.take(rows).astype(np.int64)
        rows = rows[rows >= 0]
    return np.sort(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)


def _scan_user_rows(store: AccountStore, users: np.ndarray) -> np.ndarray:
    wanted = np.zeros(store.user_count, dtype=bool)
    wanted[np.asarray(users, dtype=np.int64)] = True
    parts = [np.flatnonzero(wanted[chunk]) + offset for offset, chunk in store.ev_user.chunks()]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)


def _no_rows() -> EventRows:
    empty = np.empty(0, dtype=np.int64)
    return EventRows(empty, empty, empty)
