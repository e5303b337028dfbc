"""`ingest` actor: routes batches of records to the shards that own them."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import ray

from actors import names
from kairos.coalesce import Coalescer
from kairos.config import Settings
from kairos.ingest import Ingestor
from kairos.models import ShardBlob
from kairos.partitions import PartitionMap


class IngestActor:
    def __init__(self, settings: Settings) -> None:
        shards = [ray.get_actor(names.shard(i), namespace=names.NAMESPACE) for i in range(settings.shards)]
        # One append in flight per shard: blobs routed meanwhile share the next append.
        self._to_shard: list[Coalescer[list[ShardBlob]]] = [
            Coalescer(self._append_call(handle), max_in_flight=1, max_items=settings.max_uploads_per_call)
            for handle in shards
        ]
        self.core = Ingestor(PartitionMap(settings.partitions, settings.shards), self._send)

    @staticmethod
    def _append_call(handle: Any) -> Callable[[list[list[ShardBlob]]], Awaitable[None]]:
        async def append(groups: list[list[ShardBlob]]) -> None:
            await handle.append.remote([blob for group in groups for blob in group])

        return append

    async def _send(self, shard: int, blobs: list[ShardBlob]) -> None:
        await self._to_shard[shard].submit(blobs)

    async def ingest(self, call_id: str, uploads: list[tuple[str, bytes]]) -> int:
        return await self.core.ingest(call_id, uploads)

    def stats(self) -> dict[str, int]:
        """Coalescing so far: shard appends made, and the routed groups they carried."""
        return {"append_calls": sum(c.calls for c in self._to_shard), "append_items": sum(c.items for c in self._to_shard)}
