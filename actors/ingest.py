"""`ingest` actor: resolves users and routes batches of records to the shards that own them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import ray
import redis.asyncio as aioredis

from actors import names
from actors.heap import freeze_startup_objects
from kairos.coalesce import Coalescer
from kairos.config import Settings
from kairos.identity_graph import IdentityGraph
from kairos.ingest import Ingestor
from kairos.merge import MergeCoordinator
from kairos.models import ShardBlob
from kairos.partitions import PartitionMap

logger = logging.getLogger(__name__)


class IngestActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._shards = [ray.get_actor(names.shard(i), namespace=names.NAMESPACE) for i in range(settings.shards)]
        # One append in flight per shard: blobs routed meanwhile share the next append.
        self._to_shard: list[Coalescer[list[ShardBlob]]] = [
            Coalescer(self._append_call(handle), max_in_flight=1, max_items=settings.max_uploads_per_call)
            for handle in self._shards
        ]
        partition_map = PartitionMap(settings.partitions, settings.shards)
        graph = self._graph = IdentityGraph(aioredis.Redis.from_url(settings.redis_url))
        self.merges = MergeCoordinator(partition_map, graph, self._call_shard)
        self.core = Ingestor(partition_map, self._send, graph, self.merges)
        self._sweeper: asyncio.Task[None] | None = None

    @staticmethod
    def _append_call(handle: Any) -> Callable[[list[list[ShardBlob]]], Awaitable[dict[str, list[int]]]]:
        async def append(groups: list[list[ShardBlob]]) -> dict[str, list[int]]:
            return await handle.append.remote([blob for group in groups for blob in group])

        return append

    async def _send(self, shard: int, blobs: list[ShardBlob]) -> dict[str, list[int]]:
        refused: dict[str, list[int]] = await self._to_shard[shard].submit(blobs)
        if not refused:
            return refused
        ours = {blob.batch_id for blob in blobs}
        return {batch_id: positions for batch_id, positions in refused.items() if batch_id in ours}

    async def _call_shard(self, shard: int, method: str, *args: Any) -> Any:
        return await getattr(self._shards[shard], method).remote(*args)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        # Merges whose coordinator died (this actor's earlier life, or another) are
        # finished here. A live coordinator normally finishes its own in milliseconds;
        # if a sweep catches one still under way, both carry it out, which is harmless
        # (each step is idempotent) if wasteful.
        interval = self._settings.merge_sweep_interval_s
        while True:
            try:
                finished = await self.merges.sweep(older_than_s=interval)
                if finished:
                    logger.info("finished %d merges left pending", finished)
            except Exception:
                logger.exception("sweeping pending merges failed; retrying in %ss", interval)
            await asyncio.sleep(interval)

    async def start(self) -> None:
        self._ensure_sweeper()
        freeze_startup_objects()

    async def ingest(self, call_id: str, uploads: list[tuple[str, bytes]]) -> int:
        self._ensure_sweeper()
        return await self.core.ingest(call_id, uploads)

    async def demerge(self, account: str, users: list[str]) -> list[bool]:
        """Split each merged user back apart; False for a user that merged nothing in."""
        return [await self.merges.demerge(account, user) for user in users]

    def stats(self) -> dict[str, int]:
        """Coalescing so far (shard appends made, and the routed groups they carried) and
        identity work (groups resolved in Redis, records rerouted, merges completed)."""
        return {
            "append_calls": sum(c.calls for c in self._to_shard),
            "append_items": sum(c.items for c in self._to_shard),
            "identity_lookups": self.core.lookups,
            "rerouted": self.core.rerouted,
            "merges": self.merges.merges_completed,
        }
