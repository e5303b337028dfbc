"""`campaign_scheduler` actor: runs the campaigns of the partitions that shard i owns (see
kairos.campaigns.scheduler), so a big send's audience is read shard by shard, each
scheduler asking only its own shard."""

from __future__ import annotations

import ray
import redis.asyncio as aioredis

from actors import names
from actors.journey import ShardLookups
from actors.step_loop_actor import StepLoopActor
from kairos.campaigns.catalog import CampaignCatalog
from kairos.campaigns.scheduler import CampaignScheduler
from kairos.campaigns.store import CampaignStore
from kairos.config import Settings
from kairos.journeys.clock import clock_for
from kairos.partitions import PartitionMap
from kairos.segments.catalog import SegmentCatalog


class CampaignShardLookups(ShardLookups):
    """The audience, zones and identifiers of the users, from the shard that holds them."""

    async def identifiers(self, account: str, users: list[str]) -> list[str | None]:
        return await self._shard.identifiers_of.remote(account, users)


class CampaignSchedulerActor(StepLoopActor):
    def __init__(self, index: int, settings: Settings) -> None:
        redis = aioredis.Redis.from_url(settings.redis_url)
        partition_map = PartitionMap(settings.partitions, settings.shards)
        partitions = partition_map.partitions_of(index)
        shard = ray.get_actor(names.shard(index), namespace=names.NAMESPACE)
        clock = clock_for(settings.clock, redis)
        self.scheduler = CampaignScheduler(CampaignStore(redis, partition_map, partitions),
                                           CampaignCatalog(redis, clock), SegmentCatalog(redis),
                                           CampaignShardLookups(shard, partitions), clock, on_failure=self._exit)
        super().__init__(self.scheduler)
