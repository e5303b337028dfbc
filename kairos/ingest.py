"""The core of an `ingest` actor: place each record on its partition and hand each owning
shard one batch, never one call per record."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from kairos.models import RawLogBatch, RoutableBatch, ShardBlob, record_list_encoder, routable_decoder
from kairos.partitions import PartitionMap

SendToShard = Callable[[int, list[ShardBlob]], Awaitable[None]]


class Ingestor:
    # Users whose partition is remembered per account; past this the memory is dropped
    # and rebuilt, which bounds it without bookkeeping on the hot path.
    PLACEMENT_CACHE = 1_000_000

    def __init__(self, partition_map: PartitionMap, send: SendToShard) -> None:
        self.partition_map = partition_map
        self._send = send
        self._placement: dict[str, dict[str, int]] = {}

    def route(self, call_id: str, uploads: list[tuple[str, RoutableBatch]]) -> dict[int, list[ShardBlob]]:
        """One blob per (account, partition), grouped by owning shard. Records are moved
        as undecoded msgpack. Batch ids derive from the call id, so a retried call yields
        the same ids and is applied once."""
        groups: dict[tuple[str, int], list] = {}
        partition_of = self.partition_map.partition_of
        for account, batch in uploads:
            places = self._placement.get(account)
            if places is None or len(places) > self.PLACEMENT_CACHE:
                places = self._placement[account] = {}
            for user, record in zip(batch.users, batch.records):
                partition = places.get(user)
                if partition is None:
                    partition = places[user] = partition_of(account, user)
                group = groups.get((account, partition))
                if group is None:
                    groups[(account, partition)] = [record]
                else:
                    group.append(record)
        by_shard: dict[int, list[ShardBlob]] = {}
        for (account, partition), group in groups.items():
            payload = record_list_encoder.encode(RawLogBatch(account, group))
            blob = ShardBlob(partition, f"{call_id}/{account}/{partition}", payload)
            by_shard.setdefault(self.partition_map.shard_of(partition), []).append(blob)
        return by_shard

    async def ingest(self, call_id: str, uploads: list[tuple[str, bytes]]) -> int:
        """Route uploads (account, encoded `UploadBatch`); returns once every record is durable."""
        decoded = [(account, routable_decoder.decode(payload)) for account, payload in uploads]
        by_shard = self.route(call_id, decoded)
        await asyncio.gather(*(self._send(shard, blobs) for shard, blobs in by_shard.items()))
        return sum(len(batch.records) for _, batch in decoded)
