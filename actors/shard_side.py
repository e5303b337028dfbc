"""What an actor paired with shard i (journey actor, campaign scheduler, channel router)
opens: it owns the partitions that shard i owns, so its lookups go to that one shard;
and those lookups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
import redis.asyncio as aioredis

from actors import names
from kairos.config import Settings
from kairos.journeys.clock import Clock, clock_for
from kairos.partitions import PartitionMap


@dataclass(frozen=True)
class ShardSide:
    redis: aioredis.Redis
    partition_map: PartitionMap
    partitions: list[int]
    shard: Any  # the shard's actor handle
    clock: Clock

    @classmethod
    def open(cls, index: int, settings: Settings) -> "ShardSide":
        redis = aioredis.Redis.from_url(settings.redis_url)
        partition_map = PartitionMap(settings.partitions, settings.shards)
        return cls(redis, partition_map, partition_map.partitions_of(index),
                   ray.get_actor(names.shard(index), namespace=names.NAMESPACE), clock_for(settings.clock, redis))


class ShardLookups:
    """Profiles, zones, identifiers and segment conditions, asked of the shard that holds
    the users."""

    def __init__(self, shard: Any, partitions: list[int]) -> None:
        self._shard = shard
        self._partitions = partitions

    async def matching(self, account: str, condition: Any, users: list[str], now_ms: int, tz: str) -> list[bool]:
        return await self._shard.users_matching.remote(account, condition, users, now_ms, tz)

    async def time_zones(self, account: str, users: list[str]) -> list[str | None]:
        return await self._shard.time_zones.remote(account, users)

    async def identifiers(self, account: str, users: list[str]) -> list[str | None]:
        return await self._shard.identifiers_of.remote(account, users)

    async def segment_users(self, account: str, definition: Any, now_ms: int, tz: str) -> list[str]:
        return await self._shard.segment_user_keys.remote(account, definition, now_ms, tz, self._partitions)
