"""The core of a `user_shard`: owns some partitions, makes batches durable, applies them.

Writes use group commit: batches that arrive while a flush is in flight wait and go out
together in the next MULTI/EXEC, so a busy shard makes one Redis round trip for many
requests. A caller's `append` returns only after its batches are in the log *and*
applied, so a read right after an acknowledged upload sees it.

Merges (kairos.merge) pass through the same queue: sealing a user is a log entry, so
every batch is either before the seal (and leaves with the user's data) or after it
(and is refused, to be sent where the user went). Nothing lands in between.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Callable, Iterator, TypeVar


from kairos.config import Settings
from kairos.journeys.forwarding import TriggerForwarding
from kairos.log import PartitionLog
from kairos.models import (
    AbsorbEntry, LogBatch, LogEntry, SealEntry, ShardBlob, UserExport, log_entry_decoder, record_list_encoder,
)
from kairos.partitions import PartitionMap
from kairos.analytics.campaign_results import ResultsQuery, results_partial
from kairos.analytics.partials import analytics_partials
from kairos.segments import downloads, partials
from kairos.segments.downloads import ExportQuery
from kairos.segments.live_runner import LiveSegmentRunner
from kairos.segments.definition import parse_segment
from kairos.segments.evaluate import StoreQuery
from kairos.segments.timing import UTC
from kairos.store.account_store import AccountStore
from kairos.store.partition import ManifestEncoder, PartitionState

logger = logging.getLogger(__name__)
T = TypeVar("T")


class WrongShard(LookupError):
    """A batch or query reached a shard that does not own its partition."""


class ShardFailed(RuntimeError):
    """Applying a durable batch failed: in-memory state no longer matches the log."""


class UserShard:
    def __init__(
        self,
        shard_id: int,
        settings: Settings,
        log: PartitionLog,
        clock: Callable[[], float] = time.monotonic,
        live: LiveSegmentRunner | None = None,
        forwarding: TriggerForwarding | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.settings = settings
        self.partition_map = PartitionMap(settings.partitions, settings.shards)
        self.partitions = self.partition_map.partitions_of(shard_id)
        self._log = log
        self._clock = clock
        self._states: dict[int, PartitionState] = {}
        self._snapshot_at: dict[int, float] = {}
        self._pending: list[tuple[list[ShardBlob], asyncio.Future[dict[str, list[int]]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._snapshot_locks = {p: asyncio.Lock() for p in self.partitions}
        self._persisted_chunks: dict[int, set[str]] = {p: set() for p in self.partitions}
        # Partitions fill at the same rate, so equal thresholds would make all of them
        # snapshot at once; spread the thresholds over [N, 2N).
        every = settings.snapshot_every_records
        self._snapshot_threshold = {
            p: every + every * i // len(self.partitions) for i, p in enumerate(self.partitions)
        }
        self._snapshotter: asyncio.Task[None] | None = None
        self.replayed_entries = 0
        self.live = live
        self.forwarding = forwarding
        # Held from applying a batch until its journey events are in the inbox: a snapshot
        # taken in between would cover a batch whose events a crash could then lose.
        self._forward_lock = asyncio.Lock()

    # --- lifecycle ------------------------------------------------------------

    async def ready(self) -> None:
        """Rebuild state from snapshots and log tails once; every entry point awaits it."""
        if self._recovery is None:
            self._recovery = asyncio.ensure_future(self._recover())
        try:
            await asyncio.shield(self._recovery)
        except Exception as exc:
            # Redis unreachable, or a log entry that cannot be applied: this process can
            # do nothing useful, so it reports failure and the actor layer restarts it.
            self._failure = self._failure or exc
        if self._failure is not None:
            raise ShardFailed(f"shard {self.shard_id} failed: {self._failure!r}")

    async def _recover(self) -> None:
        window = self.settings.dedupe_window_records
        if self.forwarding is not None:
            await self.forwarding.load()
        for index, partition in enumerate(self.partitions):
            manifest = await self._log.load_snapshot(partition)
            if manifest is None:
                state = PartitionState(partition, window)
            else:
                chunk_ids = PartitionState.chunk_ids(manifest)
                state = PartitionState.restore(manifest, await self._log.load_chunks(partition, chunk_ids), window)
                self._persisted_chunks[partition] = set(chunk_ids)
            if self.forwarding is not None:
                state.forward = self.forwarding.interest
            tail = await self._log.read_after(partition, state.last_log_id)
            forwarded = []
            for log_id, batch_id, payload in tail:
                state.apply(batch_id, log_id, log_entry_decoder.decode(payload))
                forwarded.append((partition, log_id, state.take_forwarded()))
            forwarded = [item for item in forwarded if item[2]]
            if forwarded and self.forwarding is not None:
                # Events of batches whose inbox entry a crash may have lost (the inbox
                # ignores those it has).
                await self.forwarding.write(forwarded)
            self.replayed_entries += len(tail)
            self._states[partition] = state
            # Stagger the partitions' timers so they do not all come due at once.
            stagger = self.settings.snapshot_interval_s * index / len(self.partitions)
            self._snapshot_at[partition] = self._clock() - stagger
        if self.live is not None:
            await self.live.load(self._states)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    # --- writes ---------------------------------------------------------------

    async def append(self, blobs: list[ShardBlob]) -> dict[str, list[int]]:
        """Make the blobs durable and applied. Returns, by batch id, the positions of
        records refused because their user was merged into another (usually nothing);
        the caller re-resolves those records and sends them on."""
        await self.ready()
        return await self._submit(blobs)

    async def seal(self, account: str, merges: list[tuple[str, str]]) -> list[UserExport]:
        """Seal each (user, into) pair - from now on records of `user` are refused - and
        return what each user held, for `absorb` on the shard of `into`."""
        await self.ready()
        by_partition = self._by_partition(account, merges)
        await self._submit([
            self._control_blob(p, SealEntry(account, [u for u, _ in pairs], [i for _, i in pairs]))
            for p, pairs in by_partition.items()
        ])
        exports: dict[str, UserExport] = {}
        for partition, pairs in by_partition.items():
            users = [user for user, _ in pairs]
            exports.update(zip(users, self._states[partition].export(account, users)))
        return [exports[user] for user, _ in merges]

    async def constituents(self, account: str, user: str) -> list[tuple[str, list[str]]]:
        """The users merged into `user`, each with the identifiers it brought."""
        await self.ready()
        return self._state(self.partition_map.partition_of(account, user)).constituents(account, user)

    async def split(self, account: str, user: str, into: str) -> dict[str, UserExport]:
        """Seal a merged user (its stray records go to `into`, the part that keeps its
        own identifiers) and return its parts, for `absorb` into fresh users."""
        await self.ready()
        partition = self.partition_map.partition_of(account, user)
        await self._submit([self._control_blob(partition, SealEntry(account, [user], [into]))])
        return self._state(partition).split(account, user)

    async def absorb(self, account: str, items: list[tuple[str, UserExport]]) -> list[bool]:
        """Merge each export into its user. False for a user that was itself merged away
        meanwhile: the caller finds where it went and absorbs there."""
        await self.ready()
        by_partition = self._by_partition(account, items)
        blobs = [
            self._control_blob(p, AbsorbEntry(account, [u for u, _ in part], [d for _, d in part]))
            for p, part in by_partition.items()
        ]
        refused = await self._submit(blobs)
        moved = {
            (p, i) for blob, p in zip(blobs, by_partition) for i in refused.get(blob.batch_id, ())
        }
        positions: dict[int, int] = {}
        accepted = []
        for user, _ in items:
            p = self.partition_map.partition_of(account, user)
            i = positions.get(p, 0)
            positions[p] = i + 1
            accepted.append((p, i) not in moved)
        return accepted

    def _by_partition(self, account: str, pairs: list[tuple[str, T]]) -> dict[int, list[tuple[str, T]]]:
        grouped: dict[int, list[tuple[str, T]]] = {}
        for user, value in pairs:
            grouped.setdefault(self.partition_map.partition_of(account, user), []).append((user, value))
        return grouped

    def _control_blob(self, partition: int, entry: LogEntry) -> ShardBlob:
        # Seals and absorbs are idempotent by state (a sealed user stays sealed, an
        # absorbed source is remembered), so each call's entry has an id of its own.
        return ShardBlob(partition, f"ctl/{uuid.uuid4().hex}", record_list_encoder.encode(entry))

    async def _submit(self, blobs: list[ShardBlob]) -> dict[str, list[int]]:
        for blob in blobs:
            if blob.partition not in self._states:
                raise WrongShard(f"partition {blob.partition} is not owned by shard {self.shard_id}")
        future: asyncio.Future[dict[str, list[int]]] = asyncio.get_running_loop().create_future()
        self._pending.append((blobs, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_pending())
        return await future

    def _admit(
        self, state: PartitionState, entry: LogEntry, payload: bytes, sealing: set[tuple[str, str]]
    ) -> tuple[LogEntry | None, bytes, list[int]]:
        """What of an entry goes into the log, and which positions it refuses. `sealing`
        holds the users sealed earlier in this flush: their records are refused too."""
        if type(entry) is LogBatch:
            account = entry.account
            store = state.account(account)
            if not sealing and (store is None or not store.sealed):
                return entry, payload, []
            refused = [
                i for i, user in enumerate(entry.users)
                if (account, user) in sealing or state.is_sealed(account, user)
            ]
            if not refused:
                return entry, payload, []
            dropped = set(refused)
            kept = [i for i in range(len(entry.users)) if i not in dropped]
            entry = LogBatch(account, [entry.users[i] for i in kept], [entry.records[i] for i in kept], refused)
            return entry, record_list_encoder.encode(entry), refused
        if type(entry) is SealEntry:
            account = entry.account
            fresh = [
                (user, into) for user, into in zip(entry.users, entry.into)
                if (account, user) not in sealing and not state.is_sealed(account, user)
            ]
            if not fresh:
                return None, payload, []  # all sealed already: a retried merge
            sealing.update((account, user) for user, _ in fresh)
            if len(fresh) < len(entry.users):
                entry = SealEntry(account, [u for u, _ in fresh], [i for _, i in fresh])
                payload = record_list_encoder.encode(entry)
            return entry, payload, []
        assert type(entry) is AbsorbEntry
        account = entry.account
        refused, kept = [], []
        for i, (user, data) in enumerate(zip(entry.users, entry.data)):
            if (account, user) in sealing or state.is_sealed(account, user):
                refused.append(i)
            elif not state.is_absorbed(account, data.source):
                kept.append(i)
        if not kept:
            return None, payload, refused
        if len(kept) < len(entry.users):
            entry = AbsorbEntry(account, [entry.users[i] for i in kept], [entry.data[i] for i in kept])
            payload = record_list_encoder.encode(entry)
        return entry, payload, refused

    async def _flush_pending(self) -> None:
        while self._pending:
            work, self._pending = self._pending, []
            fresh: list[tuple[int, str, bytes]] = []
            entries: list[LogEntry | None] = []
            outcome: dict[str, list[int]] = {}
            sealing: set[tuple[str, str]] = set()
            try:
                for blobs, _ in work:
                    for blob in blobs:
                        # A retried hop: already durable and applied, or twice in this flush.
                        state = self._states[blob.partition]
                        if blob.batch_id in outcome:
                            continue
                        if state.has_batch(blob.batch_id):
                            outcome[blob.batch_id] = state.refused_by(blob.batch_id)
                            continue
                        if not sealing and not state.has_sealed_users:
                            # Nothing can be refused: decode after the append, off the
                            # path that holds the next flush back.
                            outcome[blob.batch_id] = []
                            fresh.append((blob.partition, blob.batch_id, blob.payload))
                            entries.append(None)
                            continue
                        entry, payload, refused = self._admit(
                            state, log_entry_decoder.decode(blob.payload), blob.payload, sealing)
                        outcome[blob.batch_id] = refused
                        if entry is not None:
                            fresh.append((blob.partition, blob.batch_id, payload))
                            entries.append(entry)
                log_ids = await self._log.append(fresh) if fresh else []
                async with self._forward_lock:
                    forwarded = []
                    for (partition, batch_id, payload), log_id, entry in zip(fresh, log_ids, entries):
                        if entry is None:
                            entry = log_entry_decoder.decode(payload)
                        state = self._states[partition]
                        state.apply(batch_id, log_id, entry)
                        if state.forwarded:
                            forwarded.append((partition, log_id, state.take_forwarded()))
                    if forwarded and self.forwarding is not None:
                        # Before the answer: an acknowledged event has reached its journeys.
                        await self.forwarding.write(forwarded)
            except Exception as exc:
                # Either the append failed - and MULTI/EXEC may still have committed before
                # the reply was lost - or a durable batch could not be applied. Memory may
                # now disagree with the log; only a restart that replays the log is honest.
                # A shard call retried by Ray carries the same batch ids, so nothing counts twice.
                self._failure = exc
                logger.exception("shard %s failed to make a batch durable and applied", self.shard_id)
                error = ShardFailed(f"shard {self.shard_id} failed: {exc!r}")
                for _, future in work + self._pending:
                    if not future.done():
                        future.set_exception(error)
                self._pending = []
                return
            if self.live is not None:
                # Before the answer: a signal is out by the time its upload is acknowledged.
                try:
                    await self.live.after_apply(self._states)
                except Exception:
                    # The batches are durable and applied; only their signals are lost.
                    logger.exception("shard %s could not evaluate live segments", self.shard_id)
            for blobs, future in work:
                if not future.done():
                    future.set_result({b.batch_id: outcome[b.batch_id] for b in blobs if outcome[b.batch_id]})
            if self._snapshotter is None or self._snapshotter.done():
                # Off the flush path: appends keep flowing while a snapshot is written.
                self._snapshotter = asyncio.ensure_future(self._snapshot_due())

    async def _snapshot_due(self) -> None:
        try:
            now = self._clock()
            for partition, state in self._states.items():
                due_by_size = state.records_since_snapshot >= self._snapshot_threshold[partition]
                due_by_time = now - self._snapshot_at[partition] >= self.settings.snapshot_interval_s
                if due_by_size or (due_by_time and state.records_since_snapshot):
                    await self.snapshot(partition)
        except Exception:
            # The batches are durable in the log either way; a failed snapshot only means
            # a longer replay, and it is tried again after the next flush.
            logger.exception("shard %s could not save a snapshot", self.shard_id)

    async def snapshot(self, partition: int) -> None:
        # One snapshot of a partition at a time: an older snapshot landing after a newer
        # one had trimmed the log would lose the entries between them.
        async with self._snapshot_locks[partition]:
            state = self._states[partition]
            persisted = self._persisted_chunks[partition]
            async with self._forward_lock:
                copy, new_chunks = state.snapshot_copy(persisted)
                covers, pending = state.last_log_id, state.records_since_snapshot
            encoder = ManifestEncoder(copy)
            for _ in encoder.steps():
                # Appends go on between the steps: encoding a partition of many users
                # at once would hold them back for tens of milliseconds.
                await asyncio.sleep(0)
            if self._failure is not None:
                # A flush failed: memory may disagree with the log, and may be half of a
                # batch. Only a restart that replays the log is honest; no snapshot of it.
                return
            await self._log.save_snapshot(partition, encoder.manifest, covers, new_chunks)
            persisted.update(new_chunks)
            state.records_since_snapshot -= pending
            self._snapshot_at[partition] = self._clock()

    async def snapshot_all(self) -> None:
        await self.ready()
        for partition in self.partitions:
            await self.snapshot(partition)

    # --- reads ----------------------------------------------------------------

    def _state(self, partition: int) -> PartitionState:
        state = self._states.get(partition)
        if state is None:
            raise WrongShard(f"partition {partition} is not owned by shard {self.shard_id}")
        return state

    async def get_profile(self, account: str, user: str) -> dict[str, Any] | None:
        await self.ready()
        store = self._state(self.partition_map.partition_of(account, user)).account(account)
        index = store.find_user(user) if store else None
        return store.profile_record(index) if store is not None and index is not None else None

    async def count_events(self, account: str, query: ExportQuery) -> int:
        await self.ready()
        return downloads.count_events(self._states.values(), account, query)

    async def export_events(
        self, account: str, query: ExportQuery, partition: int, start: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        await self.ready()
        return downloads.export_events(self._state(partition), account, query, start, limit)

    async def count_profiles(self, account: str, query: ExportQuery) -> int:
        await self.ready()
        return downloads.count_profiles(self._states.values(), account, query)

    async def export_profiles(
        self, account: str, query: ExportQuery, partition: int, start: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        await self.ready()
        return downloads.export_profiles(self._state(partition), account, query, start, limit)

    async def segment_count(self, account: str, definition: Any, now_ms: int, tz: str) -> int:
        await self.ready()
        return partials.segment_count(self._states.values(), account, parse_segment(definition), now_ms, tz)

    async def segment_members(
        self, account: str, definition: Any, now_ms: int, tz: str, partition: int, start: int, limit: int,
    ) -> tuple[list[dict[str, Any]], int | None]:
        await self.ready()
        return partials.segment_members(self._state(partition), account, parse_segment(definition), now_ms, tz,
                                        start, limit)

    async def analytics(self, account: str, kind: str, query: Any, now_ms: int, tz: str) -> list[Any]:
        """Partial answers (one per partition) to a trend, funnel, retention or RFM query."""
        await self.ready()
        return analytics_partials(self._states.values(), account, kind, query, now_ms, tz)

    async def campaign_results(self, account: str, query: ResultsQuery, now_ms: int) -> list[dict[str, list[int]]]:
        """Partial results (one per partition) of a campaign, per variant."""
        await self.ready()
        stores = (state.account(account) for state in self._states.values())
        return [results_partial(StoreQuery(store, now_ms, UTC), query) for store in stores
                if store is not None and store.user_count]

    async def refresh_live(self, account: str) -> dict[str, int]:
        """Take up the account's saved live segments now; returns name -> version held."""
        await self.ready()
        return await self.live.refresh(account, self._states) if self.live is not None else {}

    async def live_members(self, account: str, name: str) -> list[str]:
        """The live segment's members as this shard holds them (canonical users)."""
        await self.ready()
        members: list[str] = []
        for partition, state in self._states.items():
            store = state.account(account)
            if store is not None and self.live is not None:
                mask = self.live.segments.members(account, name, partition, store.user_count)
                members.extend(store.user_keys[int(u)] for u in mask.nonzero()[0])
        return members

    # --- journeys and campaigns ----------------------------------------------------------

    async def refresh_triggers(self, account: str) -> list[str]:
        """Take up the account's journeys and triggered campaigns now; returns the events
        forwarded to them."""
        await self.ready()
        return await self.forwarding.refresh(account) if self.forwarding is not None else []

    async def users_matching(self, account: str, definition: Any, users: list[str], now_ms: int, tz: str) -> list[bool]:
        await self.ready()
        return partials.users_matching(self._states, lambda u: self.partition_map.partition_of(account, u), account,
                                       parse_segment(definition), users, now_ms, tz)

    def _slots(self, account: str, users: list[str]) -> Iterator[tuple[AccountStore, int] | None]:
        """Each user's account store and slot here (None for a user not here)."""
        for user in users:
            store = self._state(self.partition_map.partition_of(account, user)).account(account)
            slot = store.find_user(user) if store is not None else None
            yield (store, slot) if store is not None and slot is not None else None

    async def time_zones(self, account: str, users: list[str]) -> list[str | None]:
        """Each user's profile `Tz` (None when unset or not text)."""
        await self.ready()
        zones: list[str | None] = []
        for here in self._slots(account, users):
            value = None
            if here is not None:
                store, slot = here
                value = store.profile_property(slot, "Tz")
            zones.append(value if isinstance(value, str) else None)
        return zones

    async def identifiers_of(self, account: str, users: list[str]) -> list[str | None]:
        """One identifier of each user (None for a user not here, or merged away): the name
        events about them go in under."""
        await self.ready()
        found: list[str | None] = []
        for here in self._slots(account, users):
            identifiers = here[0].identifiers(here[1]) if here is not None else []
            found.append(identifiers[0] if identifiers else None)
        return found

    async def delivery_profiles(self, account: str, users: list[str]) -> list[tuple[dict[str, Any], str] | None]:
        """Each user's profile properties and one of their identifiers (None for a user
        not here, or merged away): what the channel router reads for consent, addresses,
        time zone and templates, and the name its delivery events go back in under."""
        await self.ready()
        found: list[tuple[dict[str, Any], str] | None] = []
        for here in self._slots(account, users):
            if here is None:
                found.append(None)
                continue
            store, slot = here
            identifiers = store.identifiers(slot)
            found.append((store.profile_properties(slot), identifiers[0]) if identifiers else None)
        return found

    async def segment_user_keys(self, account: str, definition: Any, now_ms: int, tz: str,
                                partitions: list[int]) -> list[str]:
        await self.ready()
        condition = parse_segment(definition)
        return [u for p in partitions for u in partials.segment_user_keys(self._state(p), account, condition, now_ms, tz)]

    async def memory(self) -> dict[str, int]:
        await self.ready()
        totals: dict[str, int] = {}
        for state in self._states.values():
            for key, value in state.memory().items():
                totals[key] = totals.get(key, 0) + value
        totals["log_bytes"] = sum([await self._log.stream_bytes(p) for p in self.partitions])
        totals["replayed_entries"] = self.replayed_entries
        return totals
