"""The core of an `ingest` actor: place each record on its partition and hand each owning
shard one batch, never one call per record."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from kairos.models import LogBatch, Record, ShardBlob, record_list_decoder, record_list_encoder
from kairos.partitions import PartitionMap

SendToShard = Callable[[int, list[ShardBlob]], Awaitable[None]]


class Ingestor:
    def __init__(self, partition_map: PartitionMap, send: SendToShard) -> None:
        self.partition_map = partition_map
        self._send = send

    def route(self, account: str, request_id: str, records: list[Record]) -> dict[int, list[ShardBlob]]:
        """Group records into one blob per partition, grouped by owning shard. Batch ids
        derive from the request id, so a retried request yields the same ids."""
        by_partition: dict[int, list[Record]] = {}
        partition_of = self.partition_map.partition_of
        for record in records:
            by_partition.setdefault(partition_of(account, record.user), []).append(record)
        by_shard: dict[int, list[ShardBlob]] = {}
        for partition, group in by_partition.items():
            payload = record_list_encoder.encode(LogBatch(account, group))
            blob = ShardBlob(partition, f"{request_id}/{partition}", payload)
            by_shard.setdefault(self.partition_map.shard_of(partition), []).append(blob)
        return by_shard

    async def ingest(self, account: str, request_id: str, payload: bytes) -> int:
        """Route an encoded list of records; returns once every record is durable."""
        records = record_list_decoder.decode(payload)
        by_shard = self.route(account, request_id, records)
        await asyncio.gather(*(self._send(shard, blobs) for shard, blobs in by_shard.items()))
        return len(records)
