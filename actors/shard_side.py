"""What an actor paired with shard i (journey actor, campaign scheduler, channel router)
opens: it owns the partitions that shard i owns, so its lookups go to that one shard."""

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
