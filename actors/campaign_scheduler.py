"""`campaign_scheduler` actor: runs the campaigns of the partitions that shard i owns (see
kairos.campaigns.scheduler), so a big send's audience is read shard by shard, each
scheduler asking only its own shard."""

from __future__ import annotations


from actors.journey import ShardLookups
from actors.shard_side import ShardSide
from actors.step_loop_actor import StepLoopActor
from kairos.campaigns.catalog import CampaignCatalog
from kairos.campaigns.scheduler import CampaignScheduler
from kairos.campaigns.store import CampaignStore
from kairos.config import Settings
from kairos.segments.catalog import SegmentCatalog


class CampaignShardLookups(ShardLookups):
    """The audience, zones and identifiers of the users, from the shard that holds them."""

    async def identifiers(self, account: str, users: list[str]) -> list[str | None]:
        return await self._shard.identifiers_of.remote(account, users)


class CampaignSchedulerActor(StepLoopActor):
    def __init__(self, index: int, settings: Settings) -> None:
        side = ShardSide.open(index, settings)
        self.scheduler = CampaignScheduler(CampaignStore(side.redis, side.partition_map, side.partitions),
                                           CampaignCatalog(side.redis, side.clock), SegmentCatalog(side.redis),
                                           CampaignShardLookups(side.shard, side.partitions), side.clock,
                                           on_failure=self._exit)
        super().__init__(self.scheduler)
