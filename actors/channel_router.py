"""`channel_router` actor: delivers the send requests of its partitions (see
kairos.routing.router). Router i owns the partitions that shard i owns, so its profile
lookups go to one shard; its delivery events go back in through ingest."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import ray

from actors import names
from actors.heap import freeze_startup_objects
from actors.shard_side import ShardSide
from kairos.channels.in_app import InAppProvider, Inbox
from kairos.channels.registry import AccountProviders
from kairos.config import Settings
from kairos.models import Record, encode_upload
from kairos.routing.delivery_store import DeliveryStore
from kairos.routing.feedback import FeedbackForwarder
from kairos.routing.router import ChannelRouter
from kairos.routing.tracking import Tracker, tracking_key


class ShardProfiles:
    def __init__(self, shard: Any) -> None:
        self._shard = shard

    async def profiles(self, account: str, users: list[str]) -> list[tuple[dict[str, Any], str] | None]:
        return await self._shard.delivery_profiles.remote(account, users)


class ChannelRouterActor:
    def __init__(self, index: int, settings: Settings) -> None:
        self._settings = settings
        side = ShardSide.open(index, settings)
        self._redis = side.redis
        self._store = DeliveryStore(side.redis, side.partition_map, side.partitions)
        self._shard = side.shard
        self._ingest = [ray.get_actor(names.ingest(i), namespace=names.NAMESPACE) for i in range(settings.ingest_actors)]
        self._clock = side.clock
        self.providers = AccountProviders(side.redis, InAppProvider(Inbox(side.redis, side.clock)))
        self.feedback = FeedbackForwarder(side.redis, side.partitions, self._emit)
        self.router: ChannelRouter | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _emit(self, account: str, records: list[Record]) -> None:
        ingest = self._ingest[hash(account) % len(self._ingest)]
        await ingest.ingest.remote(uuid.uuid4().hex, [(account, encode_upload(records))])

    async def start(self) -> None:
        """Starts the delivery and feedback loops (again, after a restart)."""
        if self.router is None:
            tracker = Tracker(await tracking_key(self._redis), self._settings.public_base_url)
            self.router = await ChannelRouter.open(self._store, ShardProfiles(self._shard), self.providers, self._clock,
                                                   tracker)
            freeze_startup_objects()
        if not self._tasks or any(t.done() for t in self._tasks):
            for task in self._tasks:
                task.cancel()
            self._tasks = [asyncio.ensure_future(self.router.run(self._stopping)),
                           asyncio.ensure_future(self.feedback.run(self._stopping))]

    def pid(self) -> int:
        return os.getpid()
