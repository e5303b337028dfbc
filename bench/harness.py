"""What every benchmark driver needs: Kairos running on an embedded Redis and a local
Ray in a temporary data directory, an account, and the load client as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import msgspec
import ray
import redis.asyncio as aioredis

from actors.deploy import NAMESPACE, Deployment, deploy, ray_system_config
from kairos.accounts import Accounts, Credentials
from kairos.config import Settings, load_settings
from kairos.redis_server import EmbeddedRedis, _free_port

ROOT = Path(__file__).resolve().parent.parent


class Running(msgspec.Struct):
    settings: Settings
    redis_url: str
    deployment: Deployment
    creds: Credentials

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def ingest_stats(self) -> dict[str, int]:
        return {**ray.get(self.deployment.gateways[0].stats.remote()),
                **ray.get(self.deployment.ingest[0].stats.remote())}


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


@contextmanager
def embedded_redis() -> Iterator[tuple[str, str]]:
    """(data dir, Redis URL), with the fsync level from KAIROS_REDIS_FSYNC (default always)."""
    fsync = load_settings().redis_fsync
    with tempfile.TemporaryDirectory(prefix="kairos-bench-") as tmp, EmbeddedRedis(Path(tmp), fsync) as server:
        yield tmp, server.url


@contextmanager
def running_kairos(data_dir: str, redis_url: str, **overrides: Any) -> Iterator[Running]:
    settings = load_settings(data_dir=data_dir, redis_url=redis_url, port=_free_port(), **overrides)
    ray.init(num_cpus=2, include_dashboard=False, namespace=NAMESPACE, logging_level="WARNING",
             _system_config=ray_system_config())
    try:
        deployment = deploy(settings)

        async def make_account() -> Credentials:
            client = aioredis.Redis.from_url(redis_url)
            try:
                return await Accounts(client).create("bench")
            finally:
                await client.aclose()

        yield Running(settings, redis_url, deployment, asyncio.run(make_account()))
        deployment.shutdown()
    finally:
        ray.shutdown()


def load_command(running: Running, seconds: float, concurrency: int, max_requests: int = 10**9, seed: int = 1,
                 workload: str = "events", rate: float = 0.0) -> list[str]:
    return [sys.executable, "-m", "bench.load_client", "--url", running.base_url + "/1/upload",
            "--account", running.creds.account_id, f"--passcode={running.creds.passcode}",
            "--seconds", str(seconds), "--concurrency", str(concurrency),
            "--max-requests", str(max_requests), "--seed", str(seed), "--workload", workload, "--rate", str(rate)]


def run_load(running: Running, seconds: float, concurrency: int, max_requests: int = 10**9, seed: int = 1,
             workload: str = "events") -> dict[str, Any]:
    """The load client in its own process (so it does not share our interpreter)."""
    command = load_command(running, seconds, concurrency, max_requests, seed, workload)
    out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
