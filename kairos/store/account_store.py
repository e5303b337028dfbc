"""The profiles and events of one account within one partition, stored as columns.

Events are rows of four append-only columns (user, name code, ts in ms, previous row of
the same user) plus one sparse column triple (row, tag, value) per property key. The
`prev` column threads each user's events into a backwards linked list, so a user's
history is read without scanning, while scans over all events (segments, funnels) run
over whole numpy chunks.

Users are canonical users of the identity graph. A user merged into another is
*sealed*: its rows stay where they are (columns are append-only) but every scan and
lookup skips them, and a copy of them lives on in the user it was merged into.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Mapping

import msgspec
import numpy as np

from kairos.identity import IDENTIFIER_KINDS, split_user_key, user_key
from kairos.models import Constituent, EventRecord, ProfileRecord, record_identifiers
from kairos.timefmt import ms_to_clevertap_ts
from kairos.store.columns import TAG_FLOAT, TAG_MISSING, TAG_STR, ChunkedArray, GrowableArray, ValueCodec


NEVER = np.iinfo(np.int64).max


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
    """The values of one profile property, one slot per user, with the time of the write
    that set each (merges keep the later of two users' values)."""

    __slots__ = ("tags", "values", "stamps")

    def __init__(self) -> None:
        self.tags = GrowableArray(np.int8, TAG_MISSING)
        self.values = GrowableArray(np.float64, 0.0)
        self.stamps = GrowableArray(np.int64, 0)

    def set(self, user: int, tag: int, value: float, ts_ms: int) -> None:
        if user >= len(self.tags):
            self.tags.resize(user + 1)
            self.values.resize(user + 1)
        if user >= len(self.stamps):
            self.stamps.resize(user + 1)
        self.tags.values[user] = tag
        self.values.values[user] = value
        self.stamps.values[user] = ts_ms

    def stamp(self, user: int) -> int:
        return int(self.stamps.values[user]) if user < len(self.stamps) else 0

    @property
    def nbytes(self) -> int:
        return self.tags.nbytes + self.values.nbytes + self.stamps.nbytes


class AccountStore:
    def __init__(self, codec: ValueCodec) -> None:
        self.codec = codec
        self.user_index: dict[str, int] = {}
        self.user_keys: list[str] = []
        # Sentinels, so that the first record of a user sets both by min / max.
        self.first_seen = GrowableArray(np.int64, NEVER)
        self.last_seen = GrowableArray(np.int64, -NEVER)
        self.last_row = GrowableArray(np.int32, -1)
        # The identifier each user was first seen with, and any others it carried since.
        self.primary: list[str] = []
        self.more_identifiers: dict[int, list[str]] = {}
        self.profile: dict[int, DenseValues] = {}
        # Sealed users: canonical user -> the user it was merged into.
        self.sealed: dict[str, str] = {}
        # Users merged into users of this store: user -> the users it absorbed.
        self.absorbed: dict[str, list[str]] = {}
        self.absorbed_sources: set[str] = set()
        # What each merged-in user brought, per user slot, for demerges.
        self.constituents: dict[int, list[Constituent]] = {}
        self.live = GrowableArray(np.bool_, True)
        self.ev_user = ChunkedArray(np.int32)
        self.ev_name = ChunkedArray(np.int32)
        self.ev_ts = ChunkedArray(np.int64)
        self.ev_prev = ChunkedArray(np.int32)
        self.ev_props: dict[int, SparseValues] = {}

    # --- writes ---------------------------------------------------------------

    def user_slot(self, key: str, identifier: str) -> int:
        user = self.user_index.get(key)
        if user is None:
            user = self.user_index[key] = len(self.user_keys)
            self.user_keys.append(key)
            self.primary.append(identifier)
            for column in (self.first_seen, self.last_seen, self.last_row, self.live):
                column.resize(user + 1)
        return user

    def add_identifier(self, user: int, identifier: str) -> None:
        if not identifier:
            return
        if not self.primary[user]:
            self.primary[user] = identifier  # a user made by a merge before any identifier
        elif identifier != self.primary[user]:
            more = self.more_identifiers.setdefault(user, [])
            if identifier not in more:
                more.append(identifier)

    def identifiers(self, user: int) -> list[str]:
        first = [self.primary[user]] if self.primary[user] else []
        return [*first, *self.more_identifiers.get(user, ())]

    def apply_events(self, events: list[EventRecord], users_of: list[str] | None = None) -> None:
        """Append a batch of events; `users_of[i]` is event i's canonical user (by default
        the identifier it was sent with). The per-event loop only looks up codes; per-user
        updates (first/last seen, the `prev` chain) are done for the batch with numpy."""
        if not events:
            return
        strings = self.codec.strings
        codes, code_of, encode = strings.codes, strings.code, self.codec.encode
        user_index, user_slot, primary = self.user_index, self.user_slot, self.primary
        count = len(events)
        row0 = len(self.ev_user)
        users, names, stamps = [0] * count, [0] * count, [0] * count
        pending: dict[int, tuple[list[int], list[int], list[float]]] = {}
        for i, event in enumerate(events):
            key = event.user if users_of is None else users_of[i]
            user = user_index.get(key)
            if user is None:
                user = user_slot(key, event.user)
            elif event.user != primary[user]:
                # Usually one this user has here already; but a record refused by a
                # merged-away user and sent on brings an identifier new to this shard.
                self.add_identifier(user, event.user)
            if event.aliases:
                for kind, value in event.aliases.items():
                    self.add_identifier(user, user_key(kind, value))
            users[i] = user
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

    def apply_profile(self, record: ProfileRecord, user_of: str | None = None) -> None:
        """Properties are overwritten in log order: the latest write wins. `user_of` is
        the record's canonical user (by default the identifier it was sent with)."""
        user = self.user_slot(user_of or record.user, record.user)
        for identifier in record_identifiers(record):
            self.add_identifier(user, identifier)
        first, last = self.first_seen.values, self.last_seen.values
        first[user] = min(int(first[user]), record.ts_ms)
        last[user] = max(int(last[user]), record.ts_ms)
        self.set_properties(user, record.props, dict.fromkeys(record.props, record.ts_ms), overwrite=True)
        if record.unset_if:
            stale = {k: None for k, v in record.unset_if.items() if self.profile_property(user, k) == v}
            self.set_properties(user, stale, dict.fromkeys(stale, record.ts_ms), overwrite=True)

    def set_properties(self, user: int, props: Mapping[str, Any], stamps: Mapping[str, int], overwrite: bool) -> None:
        strings, encode = self.codec.strings, self.codec.encode
        for key, value in props.items():
            key_code = strings.code(key)
            column = self.profile.get(key_code)
            if column is None:
                column = self.profile[key_code] = DenseValues()
            ts_ms = stamps[key]
            if overwrite or self._property_tag(column, user) == TAG_MISSING or ts_ms > column.stamp(user):
                column.set(user, *encode(value), ts_ms)

    @staticmethod
    def _property_tag(column: DenseValues, user: int) -> int:
        return int(column.tags.values[user]) if user < len(column.tags) else TAG_MISSING

    # --- merges (the operations live in kairos.store.merging) ----------------

    def _live_rows(self, rows: np.ndarray) -> np.ndarray:
        if not self.sealed or rows.size == 0:
            return rows
        return rows[self.live.values[self.ev_user.take(rows)]]

    # --- reads ----------------------------------------------------------------

    @property
    def event_count(self) -> int:
        return len(self.ev_user)

    @property
    def user_count(self) -> int:
        return len(self.user_keys)

    def find_user(self, key: str) -> int | None:
        """The live user `key`: None if it is unknown here or was merged away."""
        user = self.user_index.get(key)
        return None if user is None or (self.sealed and key in self.sealed) else user

    def users_with_property(self, name: str, value: Any) -> list[int]:
        key_code = self.codec.strings.find(name)
        column = self.profile.get(key_code) if key_code is not None else None
        if column is None or not isinstance(value, str):
            return []
        code = self.codec.strings.find(value)
        if code is None:
            return []
        hits = (column.tags.values == TAG_STR) & (column.values.values == code)
        if self.sealed:
            hits &= self.live.values[: hits.size]
        return [int(u) for u in np.flatnonzero(hits)]

    def profile_property(self, user: int, name: str) -> Any:
        """One property's value (None when the user has none)."""
        key_code = self.codec.strings.find(name)
        column = self.profile.get(key_code) if key_code is not None else None
        if column is None or user >= len(column.tags):
            return None
        tag = int(column.tags.values[user])
        return None if tag == TAG_MISSING else self.codec.decode(tag, float(column.values.values[user]))

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

    def profile_record(self, user: int, with_events: bool = True) -> dict[str, Any]:
        """A profile in CleverTap's download shape (one value per identifier kind at the
        top level), every identifier under `identities`, first / last seen and, unless
        left out, the per-event summary."""
        props = self.profile_properties(user)
        record: dict[str, Any] = {}
        identities: dict[str, list[str]] = {}
        for identifier in self.identifiers(user):
            kind, value = split_user_key(identifier)
            if kind in IDENTIFIER_KINDS:
                record.setdefault(kind, value)
            identities.setdefault(kind, []).append(value)
        record["identities"] = identities
        if "Email" in props:
            record["email"] = props["Email"]
        if "Name" in props:
            record["name"] = props["Name"]
        record["profileData"] = props
        if with_events:
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
            rows = self._live_rows(rows)
            if rows.size:
                yield rows

    def count_events(self, name: str, from_ms: int, to_ms: int) -> int:
        return sum(int(rows.size) for rows in self.match_events(name, from_ms, to_ms))

    def event_records(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """Events in CleverTap's download shape: profile identity, ts as YYYYMMDDHHMMSS."""
        records = []
        for raw in self.raw_events(rows):
            kind, value = split_user_key(self.primary[raw["user"]])
            records.append({"profile": {kind: value}, "ts": ms_to_clevertap_ts(raw["ts_ms"]), "event_props": raw["props"]})
        return records

    def raw_events(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """The events at `rows`: user slot, ts in ms, name and properties."""
        strings, decode = self.codec.strings.values, self.codec.decode
        users, stamps, names = self.ev_user.take(rows), self.ev_ts.take(rows), self.ev_name.take(rows)
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
        return [
            {"user": user, "ts_ms": ts, "name": strings[name], "props": props[i]}
            for i, (user, ts, name) in enumerate(zip(users.tolist(), stamps.tolist(), names.tolist()))
        ]

    # --- memory ---------------------------------------------------------------

    def event_nbytes(self) -> int:
        columns = (self.ev_user, self.ev_name, self.ev_ts, self.ev_prev)
        return sum(c.nbytes for c in columns) + sum(p.nbytes for p in self.ev_props.values())

    def profile_nbytes(self) -> int:
        index = sys.getsizeof(self.user_index) + sys.getsizeof(self.user_keys) + sys.getsizeof(self.primary)
        index += sum(sys.getsizeof(k) for k in self.user_keys) + sum(sys.getsizeof(k) for k in self.primary)
        columns = self.first_seen.nbytes + self.last_seen.nbytes + self.last_row.nbytes + self.live.nbytes
        columns += sum(p.nbytes for p in self.profile.values())
        more = sum(sys.getsizeof(m) + sum(sys.getsizeof(i) for i in m) for m in self.more_identifiers.values())
        # Merge bookkeeping, roughly: its encoded size stands for its objects.
        merges = len(msgspec.msgpack.encode([self.sealed, self.absorbed, self.constituents]))
        return index + columns + more + sys.getsizeof(self.more_identifiers) + merges

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
        # Copies, not views: the state is encoded a field at a time while the store goes on
        # changing. Copying the lists suffices: a Constituent never changes once made.
        return {
            "users": list(self.user_keys),
            "first_seen": self.first_seen.values.tobytes(),
            "last_seen": self.last_seen.values.tobytes(),
            "last_row": self.last_row.values.tobytes(),
            "primary": list(self.primary),
            "more_identifiers": {user: list(more) for user, more in self.more_identifiers.items()},
            "sealed": dict(self.sealed),
            "absorbed": {user: list(sources) for user, sources in self.absorbed.items()},
            "constituents": {user: list(parts) for user, parts in self.constituents.items()},
            "profile": {
                k: [c.tags.values.tobytes(), c.values.values.tobytes(), c.stamps.values.tobytes()]
                for k, c in self.profile.items()
            },
            "events": events,
        }

    @classmethod
    def from_state(cls, codec: ValueCodec, state: dict[str, Any], chunks: Mapping[str, bytes]) -> "AccountStore":
        store = cls(codec)
        store.user_keys = list(state["users"])
        store.user_index = {key: i for i, key in enumerate(store.user_keys)}
        store.first_seen = GrowableArray.from_numpy(np.frombuffer(state["first_seen"], np.int64), NEVER)
        store.last_seen = GrowableArray.from_numpy(np.frombuffer(state["last_seen"], np.int64), -NEVER)
        store.last_row = GrowableArray.from_numpy(np.frombuffer(state["last_row"], np.int32), -1)
        store.primary = list(state["primary"])
        store.more_identifiers = {int(u): list(m) for u, m in state["more_identifiers"].items()}
        store.sealed = dict(state["sealed"])
        store.absorbed = {user: list(sources) for user, sources in state["absorbed"].items()}
        store.absorbed_sources = {source for sources in store.absorbed.values() for source in sources}
        store.constituents = {
            int(u): [msgspec.convert(c, Constituent) for c in parts] for u, parts in state["constituents"].items()
        }
        live = np.ones(len(store.user_keys), np.bool_)
        for key in store.sealed:
            if key in store.user_index:
                live[store.user_index[key]] = False
        store.live = GrowableArray.from_numpy(live, True)
        for key_code, (tags, values, stamps) in state["profile"].items():
            column = store.profile[int(key_code)] = DenseValues()
            column.tags = GrowableArray.from_numpy(np.frombuffer(tags, np.int8), TAG_MISSING)
            column.values = GrowableArray.from_numpy(np.frombuffer(values, np.float64), 0.0)
            column.stamps = GrowableArray.from_numpy(np.frombuffer(stamps, np.int64), 0)
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
