"""The core of an `ingest` actor: resolve each record's user, place it on its partition,
and hand each owning shard one batch, never one call per record.

Identifiers seen before resolve from a local cache, with no Redis round trip. The cache
can be stale after a merge made elsewhere; the shard that held the merged user then
refuses its records, and they are resolved afresh and sent to where the user went.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Protocol

from kairos.identity_graph import Merge
from kairos.models import RawLogBatch, RoutableBatch, ShardBlob, record_list_encoder, routable_decoder
from kairos.partitions import PartitionMap

SendToShard = Callable[[int, list[ShardBlob]], Awaitable[dict[str, list[int]]]]


class ResolveGraph(Protocol):
    async def resolve(self, account: str, groups: list[list[str]]) -> tuple[list[str], list[Merge]]: ...


class CompleteMerges(Protocol):
    async def complete(self, merges: list[Merge]) -> None: ...


class Ingestor:
    # Identifiers remembered per account; past this the memory is dropped and rebuilt,
    # which bounds it without bookkeeping on the hot path.
    CACHE_SIZE = 1_000_000
    # A record refused again and again is chasing a user merged faster than it can follow.
    MAX_REROUTES = 8

    def __init__(
        self, partition_map: PartitionMap, send: SendToShard, graph: ResolveGraph, merges: CompleteMerges
    ) -> None:
        self.partition_map = partition_map
        self._send = send
        self._graph = graph
        self._merges = merges
        self._users: dict[str, dict[str, str]] = {}  # account -> identifier -> user
        self._places: dict[str, dict[str, int]] = {}  # account -> user -> partition
        self.lookups = 0  # identifier groups resolved in Redis, not from the cache
        self.rerouted = 0

    # --- identity -------------------------------------------------------------------

    def _cached_users(self, account: str) -> dict[str, str]:
        return self._bounded(self._users, account)

    def _bounded(self, caches: dict[str, dict[str, Any]], account: str) -> dict[str, Any]:
        """The account's cache in `caches`, dropped and begun afresh once over CACHE_SIZE."""
        cache = caches.get(account)
        if cache is None or len(cache) > self.CACHE_SIZE:
            cache = caches[account] = {}
        return cache

    def cached_users(self, account: str, batch: RoutableBatch) -> list[str | None]:
        """Each record's user from the cache alone: None where an identifier is new, or
        where a record ties identifiers the cache places on different users."""
        cache = self._cached_users(account)
        users = [cache.get(identifier) for identifier in batch.identifiers]
        for i, others in batch.links.items():
            user = users[i]
            if user is not None and any(cache.get(other) != user for other in others):
                users[i] = None
        return users

    async def resolve(self, account: str, groups: list[list[str]]) -> tuple[list[str], list[Merge]]:
        """Resolve identifier groups in Redis (one round trip) and remember the answers."""
        found, merges = await self._graph.resolve(account, groups)
        self.lookups += len(groups)
        users = self._cached_users(account)
        for group, user in zip(groups, found):
            for identifier in group:
                users[identifier] = user
        return found, merges

    @staticmethod
    def _group(batch: RoutableBatch, i: int) -> list[str]:
        return [batch.identifiers[i], *batch.links.get(i, ())]

    # --- routing ----------------------------------------------------------------------

    def route(
        self, call_id: str, uploads: list[tuple[str, RoutableBatch, list[str]]], only: list[list[int]] | None = None
    ) -> tuple[dict[int, list[ShardBlob]], dict[str, tuple[str, int]]]:
        """One blob per (account, partition), grouped by owning shard; `users[i]` is record
        i's user, and `only`, if given, picks the records of each upload to send. Records
        move as undecoded msgpack. Batch ids derive from the call id, so a shard call
        retried after the shard restarted is applied once. Also returns each blob's
        (account, partition), for `positions_of`."""
        groups: dict[tuple[str, int], tuple[list[str], list]] = {}
        for u, (account, batch, users) in enumerate(uploads):
            places = self._places_of(account)
            records = batch.records
            for i in (range(len(records)) if only is None else only[u]):
                user = users[i]
                partition = places.get(user)
                if partition is None:
                    partition = places[user] = self.partition_map.partition_of(account, user)
                group = groups.get((account, partition))
                if group is None:
                    groups[(account, partition)] = ([user], [records[i]])
                else:
                    group[0].append(user)
                    group[1].append(records[i])
        by_shard: dict[int, list[ShardBlob]] = {}
        blobs_of: dict[str, tuple[str, int]] = {}
        for (account, partition), (users, records) in groups.items():
            payload = record_list_encoder.encode(RawLogBatch(account, users, records))
            batch_id = f"{call_id}/{account}/{partition}"
            by_shard.setdefault(self.partition_map.shard_of(partition), []).append(ShardBlob(partition, batch_id, payload))
            blobs_of[batch_id] = (account, partition)
        return by_shard, blobs_of

    def positions_of(
        self, uploads: list[tuple[str, RoutableBatch, list[str]]], only: list[list[int]] | None,
        account: str, partition: int,
    ) -> list[tuple[int, int]]:
        """The (upload, record) positions `route` put in the blob of (account, partition),
        in blob order. Rebuilt only when a shard refuses some of a blob's records, so the
        hot path keeps no per-record bookkeeping."""
        partition_of = self.partition_map.partition_of  # not the cache: it may have been reset since
        return [
            (u, i)
            for u, (acc, batch, users) in enumerate(uploads) if acc == account
            for i in (range(len(batch.records)) if only is None else only[u])
            if partition_of(account, users[i]) == partition
        ]

    def _places_of(self, account: str) -> dict[str, int]:
        return self._bounded(self._places, account)

    async def ingest(self, call_id: str, uploads: list[tuple[str, bytes]]) -> int:
        """Route uploads (account, encoded `UploadBatch`); returns once every record is
        durable, in the profile of its user, and every merge it caused is complete."""
        decoded = [(account, routable_decoder.decode(payload)) for account, payload in uploads]
        merging: list[asyncio.Future[None]] = []
        resolved: list[tuple[str, RoutableBatch, list[str]]] = []
        missing: list[tuple[str, RoutableBatch, list[str | None], list[int]]] = []
        for account, batch in decoded:
            users = self.cached_users(account, batch)
            missing.append((account, batch, users, [i for i, user in enumerate(users) if user is None]))
            resolved.append((account, batch, users))  # type: ignore[arg-type]
        delivered: BaseException | None = None
        try:
            await self._resolve_in_place(missing, merging)
            await self._deliver(call_id, resolved, merging)
        except Exception as exc:
            delivered = exc
        # Merges this call started must be done before its records are acknowledged: a
        # read right after sees the whole merged profile. A failed merge stays pending
        # and a sweep finishes it; the delivery's own error, if any, is the one to report.
        outcomes = await asyncio.gather(*merging, return_exceptions=True)
        if delivered is not None:
            raise delivered
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return sum(len(batch.records) for _, batch in decoded)

    async def _resolve_in_place(
        self, work: list[tuple[str, RoutableBatch, list[str | None], list[int]]], merging: list[asyncio.Future[None]],
    ) -> None:
        """Resolve in Redis the records at the given positions of each upload, one round
        trip per account, writing their users in place; merges it causes start at once."""
        by_account: dict[str, list[tuple[list[str | None], int, list[str]]]] = {}
        for account, batch, users, positions in work:
            for i in positions:
                by_account.setdefault(account, []).append((users, i, self._group(batch, i)))
        for account, items in by_account.items():
            found, merges = await self.resolve(account, [group for _, _, group in items])
            for (users, i, _), user in zip(items, found):
                users[i] = user
            if merges:
                merging.append(asyncio.ensure_future(self._merges.complete(merges)))

    async def _deliver(
        self, call_id: str, uploads: list[tuple[str, RoutableBatch, list[str]]], merging: list[asyncio.Future[None]]
    ) -> None:
        only: list[list[int]] | None = None
        for attempt in range(self.MAX_REROUTES + 1):
            by_shard, blobs_of = self.route(call_id if attempt == 0 else f"{call_id}/r{attempt}", uploads, only)
            answers = await asyncio.gather(*(self._send(shard, blobs) for shard, blobs in by_shard.items()))
            refused: list[list[int]] = [[] for _ in uploads]
            for answer in answers:
                for batch_id, positions in answer.items():
                    carried = self.positions_of(uploads, only, *blobs_of[batch_id])
                    for p in positions:
                        u, i = carried[p]
                        refused[u].append(i)
            if not any(refused):
                return
            # Their users were merged away: find where they went, and send them there.
            self.rerouted += sum(len(r) for r in refused)
            await self._resolve_in_place(
                [(account, batch, users, refused[u]) for u, (account, batch, users) in enumerate(uploads)], merging)
            only = refused
        raise RuntimeError(f"records still refused after {self.MAX_REROUTES} reroutes: their users keep merging")
