"""Gateway actor: runs the aiohttp app in a Ray worker, so a cluster can run one per node
(several processes share the port through SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from ray.exceptions import RayError

from gateway.app import create_app
from gateway.backend import BackendUnavailable
from kairos.accounts import Accounts
from kairos.coalesce import Coalescer
from kairos.config import Settings
from kairos.partitions import PartitionMap


class RayBackend:
    def __init__(self, settings: Settings, ingest: list[Any], shards: list[Any]) -> None:
        self.partition_map = PartitionMap(settings.partitions, settings.shards)
        self._ingest = itertools.cycle(ingest)
        self._shards = shards
        self._timeout = settings.request_timeout_s
        # One call in flight per ingest actor: uploads that arrive meanwhile share the next.
        self._coalescer: Coalescer[tuple[str, bytes]] = Coalescer(
            self._ingest_call, max_in_flight=2 * len(ingest), max_items=settings.max_uploads_per_call
        )

    async def _await(self, ref: Any) -> Any:
        try:
            return await asyncio.wait_for(ref, self._timeout)
        except asyncio.TimeoutError:
            raise BackendUnavailable(f"no answer within {self._timeout}s") from None
        except RayError as exc:
            raise BackendUnavailable(type(exc).__name__) from exc

    async def ingest(self, account: str, payload: bytes) -> None:
        await self._coalescer.submit((account, payload))

    async def _ingest_call(self, uploads: list[tuple[str, bytes]]) -> int:
        # The call id names the batches downstream; Ray's retry of this call reuses it.
        return await self._await(next(self._ingest).ingest.remote(uuid.uuid4().hex, uploads))

    async def call_shard(self, shard: int, method: str, *args: Any) -> Any:
        return await self._await(getattr(self._shards[shard], method).remote(*args))


class GatewayActor:
    def __init__(self, settings: Settings, ingest: list[Any], shards: list[Any]) -> None:
        self._settings = settings
        self._ingest = ingest
        self._shards = shards
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Serve, if not serving already; returns the bound port. Safe to call again."""
        if self._runner is None:
            settings = self._settings
            accounts = Accounts(aioredis.Redis.from_url(settings.redis_url), settings.auth_cache_s)
            app = create_app(settings, RayBackend(settings, self._ingest, self._shards), accounts)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, settings.host, settings.port, reuse_port=True).start()
            self._runner = runner
        return self._settings.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
