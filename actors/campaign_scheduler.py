"""`campaign_scheduler` actor: runs the campaigns of the partitions that shard i owns (see
kairos.campaigns.scheduler), so a big send's audience is read shard by shard, each
scheduler asking only its own shard."""

from __future__ import annotations

from actors.shard_side import ShardLookups, ShardSide
from actors.step_loop_actor import StepLoopActor
from kairos.campaigns.catalog import CampaignCatalog
from kairos.campaigns.scheduler import CampaignScheduler
from kairos.campaigns.store import CampaignStore
from kairos.config import Settings
from kairos.segments.catalog import SegmentCatalog


class CampaignSchedulerActor(StepLoopActor):
    def __init__(self, index: int, settings: Settings) -> None:
        side = ShardSide.open(index, settings)
        self.scheduler = CampaignScheduler(CampaignStore(side.redis, side.partition_map, side.partitions),
                                           CampaignCatalog(side.redis, side.clock), SegmentCatalog(side.redis),
                                           ShardLookups(side.shard, side.partitions), side.clock,
                                           on_failure=self._exit)
        super().__init__(self.scheduler)
