"""The profiles and events of one account within one partition, stored as columns.

Events are rows of four append-only columns (user, name code, ts in ms, previous row of
the same user) plus one sparse column triple (row, tag, value) per property key. The
`prev` column threads each user's events into a backwards linked list, so a user's
history is read without scanning, while scans over all events (segments, funnels) run
over whole numpy chunks.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Mapping

import numpy as np

from kairos.identity import split_user_key
from kairos.models import EventRecord, ProfileRecord
from kairos.timefmt import ms_to_clevertap_ts
from kairos.store.columns import TAG_FLOAT, TAG_MISSING, TAG_STR, ChunkedArray, GrowableArray, ValueCodec


_NEVER = np.iinfo(np.int64).max


class SparseValues:
    """The values of one event property: only the rows that carry it."""

    __slots__ = ("rows", "tags", "values")

    def __init__(self) -> None:
        self.rows = ChunkedArray(np.int32)
        self.tags = ChunkedArray(np.int8)
        self.values = ChunkedArray(np.float64)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.tags.nbytes + self.values.nbytes


class DenseValues:
    """The values of one profile property, one slot per user."""

    __slots__ = ("tags", "values")

    def __init__(self) -> None:
        self.tags = GrowableArray(np.int8, TAG_MISSING)
        self.values = GrowableArray(np.float64, 0.0)

    def set(self, user: int, tag: int, value: float) -> None:
        if user >= len(self.tags):
            self.tags.resize(user + 1)
            self.values.resize(user + 1)
        self.tags.values[user] = tag
        self.values.values[user] = value

    @property
    def nbytes(self) -> int:
        return self.tags.nbytes + self.values.nbytes


class AccountStore:
    def __init__(self, codec: ValueCodec) -> None:
        self.codec = codec
        self.user_index: dict[str, int] = {}
        self.user_keys: list[str] = []
        # Sentinels, so that the first record of a user sets both by min / max.
        self.first_seen = GrowableArray(np.int64, _NEVER)
        self.last_seen = GrowableArray(np.int64, -_NEVER)
        self.last_row = GrowableArray(np.int32, -1)
        self.profile: dict[int, DenseValues] = {}
        self.aliases: dict[int, dict[str, str]] = {}
        self.ev_user = ChunkedArray(np.int32)
        self.ev_name = ChunkedArray(np.int32)
        self.ev_ts = ChunkedArray(np.int64)
        self.ev_prev = ChunkedArray(np.int32)
        self.ev_props: dict[int, SparseValues] = {}

    # --- writes ---------------------------------------------------------------

    def _user_slot(self, key: str) -> int:
        user = self.user_index.get(key)
        if user is None:
            user = self.user_index[key] = len(self.user_keys)
            self.user_keys.append(key)
            for column in (self.first_seen, self.last_seen, self.last_row):
                column.resize(user + 1)
        return user

    def apply_events(self, events: list[EventRecord]) -> None:
        """Append a batch of events. The per-event loop only looks up codes; per-user
        updates (first/last seen, the `prev` chain) are done for the batch with numpy."""
        if not events:
            return
        strings = self.codec.strings
        codes, code_of, encode = strings.codes, strings.code, self.codec.encode
        user_index, user_slot = self.user_index, self._user_slot
        count = len(events)
        row0 = len(self.ev_user)
        users, names, stamps = [0] * count, [0] * count, [0] * count
        pending: dict[int, tuple[list[int], list[int], list[float]]] = {}
        for i, event in enumerate(events):
            user = user_index.get(event.user)
            users[i] = user_slot(event.user) if user is None else user
            name = codes.get(event.name)
            names[i] = code_of(event.name) if name is None else name
            stamps[i] = event.ts_ms
            row = row0 + i
            for key, value in event.props.items():
                key_code = codes.get(key)
                if key_code is None:
                    key_code = code_of(key)
                bucket = pending.get(key_code)
                if bucket is None:
                    bucket = pending[key_code] = ([], [], [])
                kind = type(value)
                if kind is str:
                    number = codes.get(value)
                    tag, number = TAG_STR, float(code_of(value) if number is None else number)
                elif kind is float:
                    tag, number = TAG_FLOAT, value
                else:
                    tag, number = encode(value)
                bucket[0].append(row)
                bucket[1].append(tag)
                bucket[2].append(number)
        user_ids = np.asarray(users, dtype=np.int64)
        ts = np.asarray(stamps, dtype=np.int64)
        np.minimum.at(self.first_seen.values, user_ids, ts)
        np.maximum.at(self.last_seen.values, user_ids, ts)
        self.ev_prev.extend(self._chain(user_ids, row0))
        self.ev_user.extend(user_ids)
        self.ev_name.extend(names)
        self.ev_ts.extend(ts)
        for key_code, (rows, tags, numbers) in pending.items():
            column = self.ev_props.get(key_code)
            if column is None:
                column = self.ev_props[key_code] = SparseValues()
            column.rows.extend(rows)
            column.tags.extend(tags)
            column.values.extend(numbers)

    def _chain(self, user_ids: np.ndarray, row0: int) -> np.ndarray:
        """Each new row's previous row of the same user, and the users' last rows updated."""
        rows = np.arange(row0, row0 + user_ids.size, dtype=np.int64)
        order = np.argsort(user_ids, kind="stable")
        sorted_users, sorted_rows = user_ids[order], rows[order]
        starts = np.empty(sorted_users.size, dtype=bool)
        starts[0] = True
        np.not_equal(sorted_users[1:], sorted_users[:-1], out=starts[1:])
        last_row = self.last_row.values
        previous = np.empty_like(sorted_rows)
        previous[1:] = sorted_rows[:-1]
        previous[starts] = last_row[sorted_users[starts]]
        ends = np.empty_like(starts)
        ends[-1] = True
        ends[:-1] = starts[1:]
        last_row[sorted_users[ends]] = sorted_rows[ends]
        prev = np.empty_like(previous)
        prev[order] = previous
        return prev

    def apply_profile(self, record: ProfileRecord) -> None:
        """Properties are overwritten in log order: the latest write wins."""
        user = self._user_slot(record.user)
        first, last = self.first_seen.values, self.last_seen.values
        first[user] = min(int(first[user]), record.ts_ms)
        last[user] = max(int(last[user]), record.ts_ms)
        strings, encode = self.codec.strings, self.codec.encode
        for key, value in record.props.items():
            key_code = strings.code(key)
            column = self.profile.get(key_code)
            if column is None:
                column = self.profile[key_code] = DenseValues()
            column.set(user, *encode(value))
        if record.aliases:
            self.aliases.setdefault(user, {}).update(record.aliases)

    # --- reads ----------------------------------------------------------------

    @property
    def event_count(self) -> int:
        return len(self.ev_user)

    @property
    def user_count(self) -> int:
        return len(self.user_keys)

    def find_user(self, key: str) -> int | None:
        return self.user_index.get(key)

    def users_with_property(self, name: str, value: Any) -> list[int]:
        key_code = self.codec.strings.find(name)
        column = self.profile.get(key_code) if key_code is not None else None
        if column is None or not isinstance(value, str):
            return []
        code = self.codec.strings.find(value)
        if code is None:
            return []
        hits = (column.tags.values == TAG_STR) & (column.values.values == code)
        return [int(u) for u in np.flatnonzero(hits)]

    def profile_properties(self, user: int) -> dict[str, Any]:
        strings, decode = self.codec.strings.values, self.codec.decode
        props: dict[str, Any] = {}
        for key_code, column in self.profile.items():
            if user < len(column.tags):
                tag = int(column.tags.values[user])
                if tag != TAG_MISSING:
                    props[strings[key_code]] = decode(tag, float(column.values.values[user]))
        return props

    def user_event_rows(self, user: int) -> list[int]:
        """The user's event rows, newest first, by walking the `prev` chain."""
        rows = []
        row = int(self.last_row.values[user])
        prev = self.ev_prev
        while row >= 0:
            rows.append(row)
            row = int(prev[row])
        return rows

    def event_summary(self, user: int) -> dict[str, dict[str, int]]:
        """Per event name: count, first and last seen (epoch seconds), as CleverTap shows."""
        summary: dict[str, dict[str, int]] = {}
        rows = np.asarray(self.user_event_rows(user), dtype=np.int64)
        if rows.size == 0:
            return summary
        names, stamps = self.ev_name.take(rows), self.ev_ts.take(rows)
        strings = self.codec.strings.values
        for code in np.unique(names):
            ts = stamps[names == code]
            summary[strings[int(code)]] = {
                "count": int(ts.size), "first_seen": int(ts.min()) // 1000, "last_seen": int(ts.max()) // 1000,
            }
        return summary

    def profile_record(self, user: int) -> dict[str, Any]:
        """A profile in CleverTap's download shape, plus Kairos's first/last seen."""
        kind, value = split_user_key(self.user_keys[user])
        props = self.profile_properties(user)
        record: dict[str, Any] = {kind: value}
        record.update(self.aliases.get(user, {}))
        if "Email" in props:
            record["email"] = props["Email"]
        if "Name" in props:
            record["name"] = props["Name"]
        record["profileData"] = props
        record["events"] = self.event_summary(user)
        record["first_seen"] = int(self.first_seen.values[user]) // 1000
        record["last_seen"] = int(self.last_seen.values[user]) // 1000
        return record

    def match_events(self, name: str, from_ms: int, to_ms: int, start_row: int = 0) -> Iterable[np.ndarray]:
        """Rows (ascending, >= start_row) of events named `name` with from <= ts < to,
        one array per chunk, so a caller can stop as soon as it has enough."""
        code = self.codec.strings.find(name)
        if code is None:
            return
        for (offset, names), (_, stamps) in zip(self.ev_name.chunks(start_row), self.ev_ts.chunks(start_row)):
            hit = (names == code) & (stamps >= from_ms) & (stamps < to_ms)
            rows = np.flatnonzero(hit) + offset
            if offset < start_row:
                rows = rows[rows >= start_row]
            if rows.size:
                yield rows

    def count_events(self, name: str, from_ms: int, to_ms: int) -> int:
        return sum(int(rows.size) for rows in self.match_events(name, from_ms, to_ms))

    def users_with_event(self, name: str, from_ms: int, to_ms: int) -> np.ndarray:
        parts = [np.unique(self.ev_user.take(rows)) for rows in self.match_events(name, from_ms, to_ms)]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int32)

    def event_records(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """Events in CleverTap's download shape: profile identity, ts as YYYYMMDDHHMMSS."""
        strings, decode = self.codec.strings.values, self.codec.decode
        users, stamps = self.ev_user.take(rows), self.ev_ts.take(rows)
        props: list[dict[str, Any]] = [{} for _ in range(rows.size)]
        for key_code, column in self.ev_props.items():
            # A property's rows ascend, so each asked-for row is found by binary search,
            # chunk by chunk: a page costs its own size, not the partition's.
            size = len(column.rows)
            at = column.rows.searchsorted(rows)
            found = np.flatnonzero((at < size) & (column.rows.take(np.minimum(at, size - 1)) == rows))
            if not found.size:
                continue
            positions = at[found]
            tags, values = column.tags.take(positions), column.values.take(positions)
            key = strings[key_code]
            for i, tag, value in zip(found.tolist(), tags.tolist(), values.tolist()):
                props[i][key] = decode(tag, value)
        records = []
        for i in range(rows.size):
            kind, value = split_user_key(self.user_keys[int(users[i])])
            records.append({"profile": {kind: value}, "ts": ms_to_clevertap_ts(int(stamps[i])), "event_props": props[i]})
        return records

    # --- memory ---------------------------------------------------------------

    def event_nbytes(self) -> int:
        columns = (self.ev_user, self.ev_name, self.ev_ts, self.ev_prev)
        return sum(c.nbytes for c in columns) + sum(p.nbytes for p in self.ev_props.values())

    def profile_nbytes(self) -> int:
        index = sys.getsizeof(self.user_index) + sys.getsizeof(self.user_keys)
        index += sum(sys.getsizeof(k) for k in self.user_keys)
        columns = self.first_seen.nbytes + self.last_seen.nbytes + self.last_row.nbytes
        columns += sum(p.nbytes for p in self.profile.values())
        aliases = sum(sys.getsizeof(a) + sum(sys.getsizeof(v) for v in a.values()) for a in self.aliases.values())
        return index + columns + aliases + sys.getsizeof(self.aliases)

    # --- snapshot ---------------------------------------------------------------
    # Event columns are chunked and append-only: a snapshot names each sealed chunk by a
    # stable id (and hands the chunk to `chunks`), and stores only the growing tail inline.
    # Profile columns change in place, so they are stored whole.

    def _event_columns(self) -> dict[str, ChunkedArray]:
        columns = {"user": self.ev_user, "name": self.ev_name, "ts": self.ev_ts, "prev": self.ev_prev}
        for key_code, prop in self.ev_props.items():
            columns[f"p{key_code}.rows"] = prop.rows
            columns[f"p{key_code}.tags"] = prop.tags
            columns[f"p{key_code}.values"] = prop.values
        return columns

    def to_state(self, prefix: str, chunks: dict[str, np.ndarray]) -> dict[str, Any]:
        events = {}
        for name, column in self._event_columns().items():
            ids = [f"{prefix}/{name}/{i}" for i in range(len(column.sealed))]
            chunks.update(zip(ids, column.sealed))
            events[name] = [column.dtype.str, ids, column.tail().tobytes()]
        return {
            "users": self.user_keys,
            "first_seen": self.first_seen.values.tobytes(),
            "last_seen": self.last_seen.values.tobytes(),
            "last_row": self.last_row.values.tobytes(),
            "profile": {k: [c.tags.values.tobytes(), c.values.values.tobytes()] for k, c in self.profile.items()},
            "aliases": self.aliases,
            "events": events,
        }

    @classmethod
    def from_state(cls, codec: ValueCodec, state: dict[str, Any], chunks: Mapping[str, bytes]) -> "AccountStore":
        store = cls(codec)
        store.user_keys = list(state["users"])
        store.user_index = {key: i for i, key in enumerate(store.user_keys)}
        store.first_seen = GrowableArray.from_numpy(np.frombuffer(state["first_seen"], np.int64), _NEVER)
        store.last_seen = GrowableArray.from_numpy(np.frombuffer(state["last_seen"], np.int64), -_NEVER)
        store.last_row = GrowableArray.from_numpy(np.frombuffer(state["last_row"], np.int32), -1)
        for key_code, (tags, values) in state["profile"].items():
            column = store.profile[int(key_code)] = DenseValues()
            column.tags = GrowableArray.from_numpy(np.frombuffer(tags, np.int8), TAG_MISSING)
            column.values = GrowableArray.from_numpy(np.frombuffer(values, np.float64), 0.0)
        store.aliases = {int(u): dict(a) for u, a in state["aliases"].items()}
        columns: dict[str, ChunkedArray] = {}
        for name, (dtype, ids, tail) in state["events"].items():
            sealed = [np.frombuffer(chunks[i], dtype) for i in ids]
            columns[name] = ChunkedArray.from_parts(dtype, sealed, np.frombuffer(tail, dtype))
        store.ev_user, store.ev_name = columns.pop("user"), columns.pop("name")
        store.ev_ts, store.ev_prev = columns.pop("ts"), columns.pop("prev")
        for name, column in columns.items():
            key, _, part = name[1:].partition(".")
            prop = store.ev_props.get(int(key))
            if prop is None:
                prop = store.ev_props[int(key)] = SparseValues()
            setattr(prop, part, column)
        return store
