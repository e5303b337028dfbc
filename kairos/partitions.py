"""Placement: which partition a user lives in, and which shard owns a partition."""

from __future__ import annotations

import zlib


def partition_of(account: str, user: str, partitions: int) -> int:
    """Stable across processes and machines (unlike `hash()`), so every gateway and
    ingest actor agrees on the owner of a user without asking anyone."""
    return zlib.crc32(f"{account}\x00{user}".encode()) % partitions


class PartitionMap:
    """Static assignment of partitions to shards: partition p belongs to shard p % shards.

    Moving partitions between shards (scale-out) changes only this map.
    """

    def __init__(self, partitions: int, shards: int) -> None:
        if not 0 < shards <= partitions:
            raise ValueError(f"need 0 < shards <= partitions, got shards={shards} partitions={partitions}")
        self.partitions = partitions
        self.shards = shards

    def shard_of(self, partition: int) -> int:
        return partition % self.shards

    def partitions_of(self, shard: int) -> list[int]:
        return list(range(shard, self.partitions, self.shards))

    def partition_of(self, account: str, user: str) -> int:
        return partition_of(account, user, self.partitions)
