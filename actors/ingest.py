"""`ingest` actor: routes batches of records to the shards that own them."""

from __future__ import annotations

from typing import Any

from kairos.config import Settings
from kairos.ingest import Ingestor
from kairos.models import ShardBlob
from kairos.partitions import PartitionMap


class IngestActor:
    def __init__(self, settings: Settings, shards: list[Any]) -> None:
        self._shards = shards
        self.core = Ingestor(PartitionMap(settings.partitions, settings.shards), self._send)

    async def _send(self, shard: int, blobs: list[ShardBlob]) -> None:
        await self._shards[shard].append.remote(blobs)

    async def ingest(self, account: str, request_id: str, payload: bytes) -> int:
        return await self.core.ingest(account, request_id, payload)
