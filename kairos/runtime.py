"""Local start-up: `kairos up`. Starts (or joins) Ray, the embedded Redis unless
KAIROS_REDIS_URL names one, the actors and the gateway; Ctrl-C stops all of it.

This module and `kairos.cli` are the only parts of `kairos/` that touch Ray, and they
import it lazily so the core stays importable without it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from contextlib import ExitStack
from typing import Callable

import redis
import redis.asyncio as aioredis

from kairos import keys
from kairos.accounts import Accounts, Credentials
from kairos.config import ConfigError, Settings
from kairos.redis_server import EmbeddedRedis, running_url

logger = logging.getLogger(__name__)
DEMO_ACCOUNT = "demo"


def check_partition_count(url: str, partitions: int) -> None:
    """The partition count places every user; changing it would strand data."""
    client = redis.Redis.from_url(url)
    try:
        client.hsetnx(keys.META, "partitions", partitions)
        stored = int(client.hget(keys.META, "partitions") or partitions)
    finally:
        client.close()
    if stored != partitions:
        raise ConfigError(
            f"KAIROS_PARTITIONS={partitions} but this data was written with {stored} partitions; "
            f"set KAIROS_PARTITIONS={stored}"
        )


def open_redis(settings: Settings, stack: ExitStack) -> str:
    """The Redis URL to use: the configured one, else an embedded server in the data dir."""
    if settings.redis_url:
        return settings.redis_url
    if running_url(settings.data_path):
        raise ConfigError(f"another Kairos is already running on data directory {settings.data_path}")
    return stack.enter_context(EmbeddedRedis(settings.data_path, settings.redis_fsync)).url


def demo_credentials(url: str, cache_s: float) -> Credentials:
    async def reset() -> Credentials:
        client = aioredis.Redis.from_url(url)
        try:
            return await Accounts(client, cache_s).reset_passcode(DEMO_ACCOUNT)
        finally:
            await client.aclose()

    return asyncio.run(reset())


def curl_example(settings: Settings, creds: Credentials) -> str:
    base = f"http://{settings.host}:{settings.port}"
    body = '{"d":[{"identity":"user-1","type":"event","evtName":"Product Viewed","evtData":{"Price":59.99}}]}'
    return (
        f"curl -s -X POST {base}/1/upload \\\n"
        f"  -H 'X-CleverTap-Account-Id: {creds.account_id}' -H 'X-CleverTap-Passcode: {creds.passcode}' \\\n"
        f"  -H 'Content-Type: application/json; charset=utf-8' \\\n"
        f"  -d '{body}'\n"
        f"curl -s '{base}/1/profile.json?identity=user-1' \\\n"
        f"  -H 'X-CleverTap-Account-Id: {creds.account_id}' -H 'X-CleverTap-Passcode: {creds.passcode}'\n"
        "# Segment / RudderStack API: the write key is the HTTP Basic user name.\n"
        f"curl -s -X POST {base}/v1/track -u '{creds.write_key}:' -H 'Content-Type: application/json' \\\n"
        """  -d '{"userId":"user-1","event":"Order Completed","properties":{"revenue":42}}'"""
    )


def up(settings: Settings, demo: bool = False,
       on_ready: Callable[[str], None] = print, stop: threading.Event | None = None) -> None:
    import ray

    from actors.deploy import NAMESPACE, deploy, ray_system_config

    stop = stop or threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ExitStack() as stack:
        url = open_redis(settings, stack)
        settings = settings.replace(redis_url=url)
        check_partition_count(url, settings.partitions)
        address = settings.ray_address or None
        # A cluster's system config is fixed by `ray start` (see cluster.yaml).
        system_config = None if address else ray_system_config()
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False,
                 logging_level=logging.WARNING, _system_config=system_config)
        stack.callback(ray.shutdown)
        deployment = deploy(settings)
        stack.callback(deployment.shutdown)
        lines = [f"Kairos is up: http://{settings.host}:{settings.port} (data: {settings.data_path}, redis: {url})"]
        if demo:
            creds = demo_credentials(url, settings.auth_cache_s)
            lines += [
                f"Demo account id: {creds.account_id}",
                f"Demo passcode:   {creds.passcode}",
                f"Demo write key:  {creds.write_key}",
                "Try it:",
                curl_example(settings, creds),
            ]
        lines.append("Press Ctrl-C to stop.")
        on_ready("\n".join(lines))
        while not stop.wait(2.0):
            deployment.ensure_serving()
        on_ready("Kairos is stopping.")
