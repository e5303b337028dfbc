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

    def route(self, call_id: str, uploads: list[tuple[str, list[Record]]]) -> dict[int, list[ShardBlob]]:
        """One blob per (account, partition), grouped by owning shard. Batch ids derive
        from the call id, so a retried call yields the same ids and is applied once."""
        groups: dict[tuple[str, int], list[Record]] = {}
        partition_of = self.partition_map.partition_of
        for account, records in uploads:
            for record in records:
                key = (account, partition_of(account, record.user))
                group = groups.get(key)
                if group is None:
                    groups[key] = [record]
                else:
                    group.append(record)
        by_shard: dict[int, list[ShardBlob]] = {}
        for (account, partition), group in groups.items():
            payload = record_list_encoder.encode(LogBatch(account, group))
            blob = ShardBlob(partition, f"{call_id}/{account}/{partition}", payload)
            by_shard.setdefault(self.partition_map.shard_of(partition), []).append(blob)
        return by_shard

    async def ingest(self, call_id: str, uploads: list[tuple[str, bytes]]) -> int:
        """Route uploads (account, encoded records); returns once every record is durable."""
        decoded = [(account, record_list_decoder.decode(payload)) for account, payload in uploads]
        by_shard = self.route(call_id, decoded)
        await asyncio.gather(*(self._send(shard, blobs) for shard, blobs in by_shard.items()))
        return sum(len(records) for _, records in decoded)
