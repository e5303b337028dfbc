"""`user_shard` actor: owns a set of partitions (see kairos.shard.UserShard)."""

from __future__ import annotations

import logging
import os
from typing import Any, Awaitable, TypeVar

import redis.asyncio as aioredis

from actors.heap import freeze_startup_objects
from kairos.campaigns.catalog import CampaignCatalog
from kairos.config import Settings
from kairos.journeys.catalog import JourneyCatalog
from kairos.journeys.clock import clock_for
from kairos.journeys.forwarding import TriggerForwarding
from kairos.log import RedisPartitionLog
from kairos.models import ShardBlob, UserExport
from kairos.segments.catalog import SegmentCatalog
from kairos.segments.live_runner import LiveSegmentRunner
from kairos.segments.signals import SignalLog
from kairos.shard import UserShard

logger = logging.getLogger(__name__)
T = TypeVar("T")


class UserShardActor:
    def __init__(self, shard_id: int, settings: Settings) -> None:
        self._redis = aioredis.Redis.from_url(settings.redis_url)
        live = LiveSegmentRunner(SegmentCatalog(self._redis), SignalLog(self._redis), settings.live_segment_tick_s)
        forwarding = TriggerForwarding(JourneyCatalog(self._redis), self._redis,
                                       CampaignCatalog(self._redis, clock_for(settings.clock, self._redis)))
        self.core = UserShard(shard_id, settings, RedisPartitionLog(self._redis), live=live, forwarding=forwarding)

    async def _guard(self, work: Awaitable[T]) -> T:
        try:
            found = await work
            if not self.core.failed:
                # Every call recovers the shard first, so its state is loaded by now.
                freeze_startup_objects()
            return found
        finally:
            if self.core.failed:
                # State and log disagree, or recovery failed: die so that Ray restarts us
                # and we rebuild from the log. Callers' retries reach the new process.
                logger.error("shard %s exiting to recover from its log", self.core.shard_id)
                os._exit(1)

    async def ready(self) -> list[int]:
        await self._guard(self.core.ready())
        return self.core.partitions

    async def append(self, blobs: list[ShardBlob]) -> dict[str, list[int]]:
        return await self._guard(self.core.append(blobs))

    async def seal(self, account: str, merges: list[tuple[str, str]]) -> list[UserExport]:
        return await self._guard(self.core.seal(account, merges))

    async def constituents(self, account: str, user: str) -> list[tuple[str, list[str]]]:
        return await self._guard(self.core.constituents(account, user))

    async def split(self, account: str, user: str, into: str) -> dict[str, UserExport]:
        return await self._guard(self.core.split(account, user, into))

    async def absorb(self, account: str, items: list[tuple[str, UserExport]]) -> list[bool]:
        return await self._guard(self.core.absorb(account, items))

    async def get_profile(self, account: str, user: str) -> dict[str, Any] | None:
        return await self._guard(self.core.get_profile(account, user))

    async def count_events(self, *args: Any) -> int:
        return await self._guard(self.core.count_events(*args))

    async def count_profiles(self, *args: Any) -> int:
        return await self._guard(self.core.count_profiles(*args))

    async def export_events(self, *args: Any) -> tuple[list[dict[str, Any]], int | None]:
        return await self._guard(self.core.export_events(*args))

    async def export_profiles(self, *args: Any) -> tuple[list[dict[str, Any]], int | None]:
        return await self._guard(self.core.export_profiles(*args))

    async def segment_count(self, *args: Any) -> int:
        return await self._guard(self.core.segment_count(*args))

    async def segment_members(self, *args: Any) -> tuple[list[dict[str, Any]], int | None]:
        return await self._guard(self.core.segment_members(*args))

    async def analytics(self, *args: Any) -> list[Any]:
        return await self._guard(self.core.analytics(*args))

    async def refresh_live(self, account: str) -> dict[str, int]:
        return await self._guard(self.core.refresh_live(account))

    async def live_members(self, account: str, name: str) -> list[str]:
        return await self._guard(self.core.live_members(account, name))

    async def refresh_triggers(self, account: str) -> list[str]:
        return await self._guard(self.core.refresh_triggers(account))

    async def campaign_results(self, *args: Any) -> list[dict[str, list[int]]]:
        return await self._guard(self.core.campaign_results(*args))

    async def users_matching(self, *args: Any) -> list[bool]:
        return await self._guard(self.core.users_matching(*args))

    async def time_zones(self, account: str, users: list[str]) -> list[str | None]:
        return await self._guard(self.core.time_zones(account, users))

    async def identifiers_of(self, account: str, users: list[str]) -> list[str | None]:
        return await self._guard(self.core.identifiers_of(account, users))

    async def delivery_profiles(self, account: str, users: list[str]) -> list[tuple[dict[str, Any], str] | None]:
        return await self._guard(self.core.delivery_profiles(account, users))

    async def segment_user_keys(self, *args: Any) -> list[str]:
        return await self._guard(self.core.segment_user_keys(*args))

    async def snapshot_all(self) -> None:
        await self._guard(self.core.snapshot_all())

    async def memory(self) -> dict[str, int]:
        return await self._guard(self.core.memory())

    def pid(self) -> int:
        return os.getpid()
