"""Gateway actor: runs the aiohttp app in a Ray worker, so a cluster can run one per node
(several processes share the port through SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import ray
import redis.asyncio as aioredis
from aiohttp import web
from ray.exceptions import RayError, RayTaskError
from redis.exceptions import RedisError

from actors import names
from actors.heap import freeze_startup_objects
from gateway.app import create_app
from gateway.backend import BackendUnavailable
from kairos.accounts import Accounts
from kairos.campaigns.catalog import CampaignCatalog
from kairos.coalesce import Coalescer
from kairos.config import Settings
from kairos.channels.in_app import Inbox
from kairos.routing.tracking import Tracker, tracking_key
from kairos.identity_graph import IdentityGraph
from kairos.journeys.clock import clock_for
from kairos.journeys.catalog import JourneyCatalog
from kairos.segments.catalog import SegmentCatalog
from kairos.segments.definition import SegmentError
from kairos.segments.signals import SignalLog
from kairos.partitions import PartitionMap


class RayBackend:
    def __init__(self, settings: Settings, ingest: list[Any], shards: list[Any], journeys: list[Any],
                 campaigns: list[Any], graph: IdentityGraph) -> None:
        self.partition_map = PartitionMap(settings.partitions, settings.shards)
        self._graph = graph
        self._ingest = itertools.cycle(ingest)
        self._shards = shards
        self._journeys = journeys
        self._campaigns = campaigns
        self._timeout = settings.request_timeout_s
        # Two calls in flight per ingest actor, so routing one overlaps the shards' work
        # on the other; uploads that arrive meanwhile share the next call.
        self.coalescer: Coalescer[tuple[str, bytes]] = Coalescer(
            self._ingest_call, max_in_flight=2 * len(ingest), max_items=settings.max_uploads_per_call
        )

    async def _await(self, ref: Any) -> Any:
        try:
            return await asyncio.wait_for(ref, self._timeout)
        except asyncio.TimeoutError:
            raise BackendUnavailable(f"no answer within {self._timeout}s") from None
        except RayTaskError as exc:
            if isinstance(exc.cause, SegmentError):
                raise exc.cause from None  # the request's fault, found by the shard: a 400
            if isinstance(exc.cause, RedisError):
                # Redis was unreachable or refused for a moment: retry later.
                raise BackendUnavailable(f"storage unavailable: {exc.cause!r}") from exc
            # The actor ran and raised: a bug, not an outage. It fails loudly as a 500.
            raise
        except RayError as exc:  # dead, restarting or unreachable actors: retry later
            raise BackendUnavailable(type(exc).__name__) from exc

    async def ingest(self, account: str, payload: bytes) -> None:
        await self.coalescer.submit((account, payload))

    async def _ingest_call(self, uploads: list[tuple[str, bytes]]) -> int:
        # The call id names the batches downstream; Ray's retry of this call reuses it.
        return await self._await(next(self._ingest).ingest.remote(uuid.uuid4().hex, uploads))

    async def call_shard(self, shard: int, method: str, *args: Any) -> Any:
        return await self._await(getattr(self._shards[shard], method).remote(*args))

    async def call_journey(self, index: int, method: str, *args: Any) -> Any:
        return await self._await(getattr(self._journeys[index], method).remote(*args))

    async def call_campaign(self, index: int, method: str, *args: Any) -> Any:
        return await self._await(getattr(self._campaigns[index], method).remote(*args))

    async def demerge(self, account: str, users: list[str]) -> list[bool]:
        return await self._await(next(self._ingest).demerge.remote(account, users))

    async def user_of(self, account: str, identifier: str) -> str | None:
        try:
            return (await self._graph.lookup(account, [identifier]))[0]
        except RedisError as exc:
            raise BackendUnavailable(f"identity graph unreachable: {exc}") from exc


class GatewayActor:
    """Runs the HTTP gateway inside a Ray worker."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ingest = [ray.get_actor(names.ingest(i), namespace=names.NAMESPACE) for i in range(settings.ingest_actors)]
        self._shards = [ray.get_actor(names.shard(i), namespace=names.NAMESPACE) for i in range(settings.shards)]
        self._journeys = [ray.get_actor(names.journey(i), namespace=names.NAMESPACE) for i in range(settings.shards)]
        self._campaigns = [ray.get_actor(names.campaign_scheduler(i), namespace=names.NAMESPACE)
                           for i in range(settings.shards)]
        self._runner: web.AppRunner | None = None
        self._backend: RayBackend | None = None

    async def start(self) -> int:
        """Serve, if not serving already; returns the bound port. Safe to call again."""
        if self._runner is None:
            settings = self._settings
            client = aioredis.Redis.from_url(settings.redis_url)
            accounts = Accounts(client, settings.auth_cache_s)
            self._backend = RayBackend(settings, self._ingest, self._shards, self._journeys, self._campaigns,
                                       IdentityGraph(client))
            clock = clock_for(settings.clock, client)
            app = create_app(settings, self._backend, accounts, SegmentCatalog(client), SignalLog(client),
                             JourneyCatalog(client), CampaignCatalog(client, clock), client, Inbox(client, clock),
                             Tracker(await tracking_key(client), settings.public_base_url))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            # Before the port opens: the one full collection holds no request.
            freeze_startup_objects()
            await web.TCPSite(runner, settings.host, settings.port, reuse_port=True).start()
            self._runner = runner
        return self._settings.port

    def stats(self) -> dict[str, int]:
        """Coalescing so far: ingest calls made, and the uploads they carried."""
        coalescer = self._backend.coalescer if self._backend else None
        return {"ingest_calls": coalescer.calls if coalescer else 0, "uploads": coalescer.items if coalescer else 0}

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
