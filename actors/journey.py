"""`journey` actor: moves the users of its partitions through journeys (see
kairos.journeys.runner). Journey actor i owns the partitions that shard i owns, so its
profile lookups go to one shard."""

from __future__ import annotations

from typing import Any


from actors.shard_side import ShardSide
from actors.step_loop_actor import StepLoopActor
from kairos.config import Settings
from kairos.journeys.catalog import JourneyCatalog
from kairos.journeys.runner import JourneyRunner
from kairos.journeys.state_store import JourneyStateStore
from kairos.segments.catalog import SegmentCatalog


class ShardLookups:
    """Profiles and segment conditions, asked of the shard that holds the users."""

    def __init__(self, shard: Any, partitions: list[int]) -> None:
        self._shard = shard
        self._partitions = partitions

    async def matching(self, account: str, condition: Any, users: list[str], now_ms: int, tz: str) -> list[bool]:
        return await self._shard.users_matching.remote(account, condition, users, now_ms, tz)

    async def time_zones(self, account: str, users: list[str]) -> list[str | None]:
        return await self._shard.time_zones.remote(account, users)

    async def segment_users(self, account: str, definition: Any, now_ms: int, tz: str) -> list[str]:
        return await self._shard.segment_user_keys.remote(account, definition, now_ms, tz, self._partitions)


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
