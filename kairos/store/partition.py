"""One partition's state: the stores of every account whose users hash here, plus what
makes replay idempotent (the ids of recently applied batches and records).

Replaying the same log over the same snapshot always yields the same state: dedupe
windows evict in insertion order, and profile writes apply in log order.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import msgspec
import numpy as np

from kairos.models import (
    AbsorbEntry, EventRecord, LogBatch, LogEntry, ProfileRecord, SealEntry, Trigger, UserExport,
)
from kairos.store import merging
from kairos.store.dedupe import BoundedIdSet, MessageIdWindow
from kairos.store.account_store import AccountStore
from kairos.store.columns import StringTable, ValueCodec


class ManifestEncoder:
    """Encodes a `PartitionState.snapshot_copy` into the snapshot manifest one field at a
    time: a partition's manifest takes tens of milliseconds to encode, and the shard's
    loop serves appends between the steps. The pieces are spliced in verbatim (`Raw`), so
    the manifest is the same bytes as encoding the nested dicts in one call."""

    def __init__(self, copy: dict[str, Any]) -> None:
        self._copy = copy
        self.manifest = b""

    def steps(self) -> Iterator[None]:
        """Encodes one field per step; `manifest` is set after the last."""
        copy, encode = self._copy, msgspec.msgpack.encode
        top: dict[str, Any] = {name: copy[name] for name in ("partition", "last_log_id", "chunks")}
        for name in ("strings", "others"):
            top[name] = msgspec.Raw(encode(copy[name]))
            yield
        # Each id window goes as one ordered dict of notes, Nones included: filtering
        # 200k of them in Python would be the longest step.
        for name in ("batch_notes", "message_notes"):
            top[name] = msgspec.Raw(encode(copy[name]))
            yield
        accounts: dict[str, msgspec.Raw] = {}
        for account, state in copy["accounts"].items():
            fields: dict[str, msgspec.Raw] = {}
            for name, value in state.items():
                fields[name] = msgspec.Raw(encode(value))
                yield
            accounts[account] = msgspec.Raw(encode(fields))
        top["accounts"] = accounts
        self.manifest = encode(top)
        self._copy = {}  # about a manifest's worth of memory, not needed while it is saved


class PartitionState:
    # Ray retries a call within an actor restart (seconds); at the ~25 batches a second a
    # busy partition sees, this covers over ten minutes, and it is in every snapshot.
    BATCH_ID_WINDOW = 20_000

    def __init__(self, partition: int, dedupe_window: int) -> None:
        self.partition = partition
        self.codec = ValueCodec(StringTable())
        self.accounts: dict[str, AccountStore] = {}
        # Applied batch ids, each noted with the positions it refused (None: none).
        self.batch_ids = BoundedIdSet(self.BATCH_ID_WINDOW)
        self.message_ids = MessageIdWindow(dedupe_window)
        self.last_log_id = "0-0"
        self.records_since_snapshot = 0
        self.duplicates_dropped = 0
        self.sealed_users = 0
        # Accounts with live segments: for them, `apply` notes which users it changed
        # (account -> canonical user keys) until the owner takes them with `take_touched`.
        self.watched: set[str] = set()
        self.touched: dict[str, set[str]] = {}
        # Events that journeys react to (account -> names; the shard's shared dict), and
        # those applied since the owner last took them.
        self.forward: dict[str, frozenset[str]] = {}
        self.forwarded: list[Trigger] = []

    def take_forwarded(self) -> list[Trigger]:
        found, self.forwarded = self.forwarded, []
        return found

    def _forward(self, account: str, events: list[EventRecord], users: list[str]) -> None:
        wanted = self.forward.get(account)
        if wanted:
            self.forwarded.extend(
                Trigger(account, user, e.name, e.ts_ms, e.props) for e, user in zip(events, users) if e.name in wanted
            )

    def take_touched(self) -> dict[str, set[str]]:
        touched, self.touched = self.touched, {}
        return touched

    def _touch(self, account: str, users: list[str]) -> None:
        if account in self.watched:
            self.touched.setdefault(account, set()).update(users)

    def account(self, account_id: str) -> AccountStore | None:
        return self.accounts.get(account_id)

    def has_batch(self, batch_id: str) -> bool:
        return batch_id in self.batch_ids

    def refused_by(self, batch_id: str) -> list[int]:
        """Positions an applied batch refused (its records of users merged away)."""
        return list(self.batch_ids.get(batch_id) or ())

    def store_of(self, account: str) -> AccountStore:
        store = self.accounts.get(account)
        if store is None:
            store = self.accounts[account] = AccountStore(self.codec)
        return store

    @property
    def has_sealed_users(self) -> bool:
        return self.sealed_users > 0

    def is_sealed(self, account: str, user: str) -> bool:
        store = self.accounts.get(account)
        return store is not None and user in store.sealed

    def is_absorbed(self, account: str, source: str) -> bool:
        store = self.accounts.get(account)
        return store is not None and source in store.absorbed_sources

    def apply(self, batch_id: str, log_id: str, entry: LogEntry) -> None:
        """Apply one log entry. A batch id seen before is skipped whole; a record whose
        messageId was seen before (for this account and user) is skipped alone."""
        self.last_log_id = log_id
        if batch_id in self.batch_ids:
            return
        if type(entry) is LogBatch:
            self.batch_ids.add(batch_id, entry.refused or None)
            self._apply_records(entry)
            self._touch(entry.account, entry.users)
        elif type(entry) is SealEntry:
            self._touch(entry.account, entry.users)
            # Seals and absorbs are idempotent by state: their ids need no room in the window.
            store = self.store_of(entry.account)
            for user, into in zip(entry.users, entry.into):
                merging.seal(store, user, into)
            self.sealed_users = sum(len(s.sealed) for s in self.accounts.values())
            self.records_since_snapshot += 1
        else:
            assert type(entry) is AbsorbEntry
            self._absorb(entry)
            self._touch(entry.account, entry.users)

    def _apply_records(self, batch: LogBatch) -> None:
        store = self.store_of(batch.account)
        account = batch.account
        self.records_since_snapshot += len(batch.records)
        if all(type(r) is EventRecord and r.message_id is None for r in batch.records):
            store.apply_events(batch.records, batch.users)  # type: ignore[arg-type]
            self._forward(account, batch.records, batch.users)  # type: ignore[arg-type]
            return
        events: list[EventRecord] = []
        event_users: list[str] = []

        def flush() -> None:
            row0 = store.event_count
            store.apply_events(events, event_users)
            self._forward(account, events, event_users)
            for i, (event, user) in enumerate(zip(events, event_users)):
                if event.message_id is not None:
                    self.message_ids.set_row(account, user, event.message_id, row0 + i)

        for record, user in zip(batch.records, batch.users):
            if record.message_id is not None:
                # Scoped to the record's user and kind: a retry of the same record is
                # dropped, while an id reused for another user or kind is not mistaken
                # for one (which would drop data silently).
                kind = "e" if type(record) is EventRecord else "p"
                if self.message_ids.seen(account, user, kind, record.message_id):
                    self.duplicates_dropped += 1
                    continue
                self.message_ids.add(account, user, kind, record.message_id)
            if type(record) is EventRecord:
                events.append(record)
                event_users.append(user)
            else:
                assert type(record) is ProfileRecord
                # Keep log order between this profile write and earlier events' user creation.
                flush()
                events, event_users = [], []
                store.apply_profile(record, user)
        flush()

    def export(self, account: str, users: list[str]) -> list[UserExport]:
        """What sealed users held here, for the users they were merged into."""
        store = self.store_of(account)
        exports = merging.export(store, users, lambda user: self.message_ids.event_rows(account, user))
        for user, data in zip(users, exports):
            data.message_ids = self.message_ids.of_user(account, user)
            data.absorbed = list(store.absorbed.get(user, ()))
        return exports

    def split(self, account: str, user: str) -> dict[str, UserExport]:
        """A sealed merged user's parts (see kairos.store.merging.split). The remainder
        remembers every user this one absorbed: a late repeat of one of those merges
        follows the forward to the remainder and must find it done, not apply it again."""
        store = self.store_of(account)
        parts = merging.split(store, user, self.message_ids.of_user(account, user))
        if merging.REMAINDER in parts:
            parts[merging.REMAINDER].absorbed = list(store.absorbed.get(user, ()))
        return parts

    def constituents(self, account: str, user: str) -> list[tuple[str, list[str]]]:
        store = self.accounts.get(account)
        return merging.constituents(store, user) if store is not None else []

    def _absorb(self, entry: AbsorbEntry) -> None:
        store, account = self.store_of(entry.account), entry.account
        items = []
        for user, data in zip(entry.users, entry.data):
            # An event retried while its user was being merged may have reached the
            # survivor already (the retry resolved to it): keep one copy.
            kept = [e.message_id is None or not self.message_ids.seen(account, user, "e", e.message_id)
                    for e in data.events]
            if not all(kept):
                self.duplicates_dropped += kept.count(False)
                data = merging.without_events(data, kept)
            items.append((user, data))
        for user, data, row0 in merging.absorb(store, items):
            for kind, message_id in data.message_ids:
                self.message_ids.add(account, user, kind, message_id)
            for i, event in enumerate(data.events):
                if event.message_id is not None:
                    self.message_ids.add(account, user, "e", event.message_id, row0 + i)
            self.records_since_snapshot += len(data.events) + 1

    # --- memory and snapshot ---------------------------------------------------

    def memory(self) -> dict[str, int]:
        events = sum(s.event_count for s in self.accounts.values())
        users = sum(s.user_count for s in self.accounts.values())
        return {
            "events": events,
            "users": users,
            "event_bytes": sum(s.event_nbytes() for s in self.accounts.values()),
            "profile_bytes": sum(s.profile_nbytes() for s in self.accounts.values()),
            "dictionary_bytes": self.codec.strings.nbytes + self.codec.others_nbytes,
        }

    def snapshot(self, persisted: set[str]) -> tuple[bytes, dict[str, bytes]]:
        """The manifest (everything mutable, and the ids of every sealed chunk) and the
        sealed chunks not in `persisted`. The cost is the new chunks plus the mutable
        state, not the whole partition."""
        copy, chunks = self.snapshot_copy(persisted)
        encoder = ManifestEncoder(copy)
        for _ in encoder.steps():
            pass
        return encoder.manifest, chunks

    def snapshot_copy(self, persisted: set[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
        """What `snapshot` holds, copied but not encoded (lists, dicts and array bytes: a
        few milliseconds), for a `ManifestEncoder` to encode while the partition goes on
        changing; and the sealed chunks not in `persisted`."""
        arrays: dict[str, np.ndarray] = {}
        accounts = {a: s.to_state(a, arrays) for a, s in self.accounts.items()}
        copy = {
            "partition": self.partition,
            "last_log_id": self.last_log_id,
            "strings": list(self.codec.strings.values),
            "others": list(self.codec.others),
            "batch_notes": self.batch_ids.copy(),
            "message_notes": self.message_ids.copy(),
            "accounts": accounts,
            "chunks": list(arrays),
        }
        return copy, {cid: arr.tobytes() for cid, arr in arrays.items() if cid not in persisted}

    @staticmethod
    def chunk_ids(manifest: bytes) -> list[str]:
        return list(msgspec.msgpack.decode(manifest)["chunks"])

    @classmethod
    def restore(cls, manifest: bytes, chunks: Mapping[str, bytes], dedupe_window: int) -> "PartitionState":
        raw: dict[str, Any] = msgspec.msgpack.decode(manifest)
        state = cls(raw["partition"], dedupe_window)
        state.codec = ValueCodec(StringTable(raw["strings"]), list(raw["others"]))
        if "batch_notes" in raw:
            batch_notes, message_notes = raw["batch_notes"], raw["message_notes"]
        else:  # a manifest written before the notes went whole: ids, and the notes that were set
            refusals, rows = raw["refusals"], raw["message_rows"]
            batch_notes = {b: refusals.get(b) for b in raw["batch_ids"]}
            message_notes = {m: rows.get(m) for m in raw["message_ids"]}
        state.batch_ids = BoundedIdSet(cls.BATCH_ID_WINDOW, batch_notes)
        state.message_ids = MessageIdWindow(dedupe_window, list(message_notes), message_notes)
        state.last_log_id = raw["last_log_id"]
        state.accounts = {a: AccountStore.from_state(state.codec, s, chunks) for a, s in raw["accounts"].items()}
        state.sealed_users = sum(len(s.sealed) for s in state.accounts.values())
        return state

    def to_bytes(self) -> bytes:
        """The whole state in one blob (manifest and every chunk), e.g. to compare states."""
        return msgspec.msgpack.encode(self.snapshot(persisted=set()))

    @classmethod
    def from_bytes(cls, data: bytes, dedupe_window: int) -> "PartitionState":
        manifest, chunks = msgspec.msgpack.decode(data)
        return cls.restore(manifest, chunks, dedupe_window)
