"""`journey` actor: moves the users of its partitions through journeys (see
kairos.journeys.runner). Journey actor i owns the partitions that shard i owns, so its
profile lookups go to one shard."""

from __future__ import annotations

from actors.shard_side import ShardLookups, ShardSide
from actors.step_loop_actor import StepLoopActor
from kairos.config import Settings
from kairos.journeys.catalog import JourneyCatalog
from kairos.journeys.runner import JourneyRunner
from kairos.journeys.state_store import JourneyStateStore
from kairos.segments.catalog import SegmentCatalog


class JourneyActor(StepLoopActor):
    def __init__(self, index: int, settings: Settings) -> None:
        side = ShardSide.open(index, settings)
        self.runner = JourneyRunner(JourneyStateStore(side.redis, side.partition_map, side.partitions),
                                    JourneyCatalog(side.redis), SegmentCatalog(side.redis),
                                    ShardLookups(side.shard, side.partitions), side.clock, on_failure=self._exit)
        super().__init__(self.runner)

    async def move(self, account: str, name: str, from_version: int, nodes: dict[str, str]) -> int:
        self._check()
        return await self.runner.move(account, name, from_version, nodes)

    async def memory(self) -> dict[str, int]:
        found = await self.runner.store.memory()
        found["waiting_in_memory"] = self.runner.engine.waiting()
        found["steps"] = self.runner.steps
        return found
