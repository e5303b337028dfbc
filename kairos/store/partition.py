"""One partition's state: the stores of every account whose users hash here, plus what
makes replay idempotent (the ids of recently applied batches and records).

Replaying the same log over the same snapshot always yields the same state: dedupe
windows evict in insertion order, and profile writes apply in log order.
"""

from __future__ import annotations

from typing import Any, Mapping

import msgspec
import numpy as np

from kairos.models import EventRecord, LogBatch, ProfileRecord
from kairos.store.account_store import AccountStore
from kairos.store.columns import StringTable, ValueCodec


class BoundedIdSet:
    """The most recent `capacity` ids, oldest evicted first."""

    __slots__ = ("capacity", "_ids")

    def __init__(self, capacity: int, ids: list[str] | None = None) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = dict.fromkeys(ids or [])

    def __contains__(self, item: str) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: str) -> None:
        self._ids[item] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]

    def to_list(self) -> list[str]:
        return list(self._ids)


class PartitionState:
    # Ray retries a call within an actor restart (seconds); at the ~25 batches a second a
    # busy partition sees, this covers over ten minutes, and it is in every snapshot.
    BATCH_ID_WINDOW = 20_000

    def __init__(self, partition: int, dedupe_window: int) -> None:
        self.partition = partition
        self.codec = ValueCodec(StringTable())
        self.accounts: dict[str, AccountStore] = {}
        self.batch_ids = BoundedIdSet(self.BATCH_ID_WINDOW)
        self.message_ids = BoundedIdSet(dedupe_window)
        self.last_log_id = "0-0"
        self.records_since_snapshot = 0
        self.duplicates_dropped = 0

    def account(self, account_id: str) -> AccountStore | None:
        return self.accounts.get(account_id)

    def has_batch(self, batch_id: str) -> bool:
        return batch_id in self.batch_ids

    def apply(self, batch_id: str, log_id: str, batch: LogBatch) -> None:
        """Apply one log entry. A batch id seen before is skipped whole; a record whose
        messageId was seen before (for this account) is skipped alone."""
        self.last_log_id = log_id
        if batch_id in self.batch_ids:
            return
        self.batch_ids.add(batch_id)
        store = self.accounts.get(batch.account)
        if store is None:
            store = self.accounts[batch.account] = AccountStore(self.codec)
        events: list[EventRecord] = []
        for record in batch.records:
            if record.message_id is not None:
                # Scoped to the record's user and kind: a retry of the same record is
                # dropped, while an id reused for another user or kind is not mistaken
                # for one (which would drop data silently).
                kind = "e" if type(record) is EventRecord else "p"
                scoped = f"{batch.account}\x00{record.user}\x00{kind}\x00{record.message_id}"
                if scoped in self.message_ids:
                    self.duplicates_dropped += 1
                    continue
                self.message_ids.add(scoped)
            if type(record) is EventRecord:
                events.append(record)
            else:
                assert type(record) is ProfileRecord
                # Keep log order between this profile write and earlier events' user creation.
                store.apply_events(events)
                events = []
                store.apply_profile(record)
        store.apply_events(events)
        self.records_since_snapshot += len(batch.records)

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
        arrays: dict[str, np.ndarray] = {}
        accounts = {a: s.to_state(a, arrays) for a, s in self.accounts.items()}
        manifest = msgspec.msgpack.encode({
            "partition": self.partition,
            "last_log_id": self.last_log_id,
            "strings": self.codec.strings.values,
            "others": self.codec.others,
            "batch_ids": self.batch_ids.to_list(),
            "message_ids": self.message_ids.to_list(),
            "accounts": accounts,
            "chunks": list(arrays),
        })
        return manifest, {cid: arr.tobytes() for cid, arr in arrays.items() if cid not in persisted}

    @staticmethod
    def chunk_ids(manifest: bytes) -> list[str]:
        return list(msgspec.msgpack.decode(manifest)["chunks"])

    @classmethod
    def restore(cls, manifest: bytes, chunks: Mapping[str, bytes], dedupe_window: int) -> "PartitionState":
        raw: dict[str, Any] = msgspec.msgpack.decode(manifest)
        state = cls(raw["partition"], dedupe_window)
        state.codec = ValueCodec(StringTable(raw["strings"]), list(raw["others"]))
        state.batch_ids = BoundedIdSet(cls.BATCH_ID_WINDOW, raw["batch_ids"])
        state.message_ids = BoundedIdSet(dedupe_window, raw["message_ids"])
        state.last_log_id = raw["last_log_id"]
        state.accounts = {a: AccountStore.from_state(state.codec, s, chunks) for a, s in raw["accounts"].items()}
        return state

    def to_bytes(self) -> bytes:
        """The whole state in one blob (manifest and every chunk), e.g. to compare states."""
        return msgspec.msgpack.encode(self.snapshot(persisted=set()))

    @classmethod
    def from_bytes(cls, data: bytes, dedupe_window: int) -> "PartitionState":
        manifest, chunks = msgspec.msgpack.decode(data)
        return cls.restore(manifest, chunks, dedupe_window)
