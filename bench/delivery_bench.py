"""Channel-router benchmark: send requests routed and handed to a provider per second,
with frequency caps and quiet hours on, and the latency from a request's commit to its
provider call.

Two router processes (as `kairos up` runs one per shard on a 2-core machine), each over
half of 16 partitions, real Redis (fsync always, as deployed), the real router: dedupe
and caps against each user's history in Redis, quiet hours in the user's zone, Liquid
templates over profile and event, throttle bookkeeping, decisions and outcomes written
transactionally, delivery events queued for ingest. Profiles are served from memory
(the shard's lookup is a Ray call per batch, not what is measured here), and the
provider is local: it notes the time it was called and accepts.

1. Throughput: --messages requests are committed to the outboxes first; the routers
   then drain them. Figures: requests decided per second and messages handed over.
2. Latency: a producer commits requests at --rate per second (in its own process, as
   journey actors do) while the routers run; p50/p99 from commit to provider call.

    .venv/bin/python bench/delivery_bench.py [--messages 200000] [--rate 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from bench.harness import embedded_redis, machine  # noqa: E402
from kairos import keys  # noqa: E402
from kairos.channels.base import Delivery, Outcome, delivered  # noqa: E402
from kairos.journeys.model import SendRequest  # noqa: E402
from kairos.partitions import PartitionMap  # noqa: E402
from kairos.routing.delivery_store import DeliveryStore  # noqa: E402
from kairos.routing.router import ChannelRouter  # noqa: E402
from kairos.routing.settings import DeliverySettings, parse_delivery_settings  # noqa: E402

PARTITIONS, ROUTERS = 16, 2
ACCOUNT = "BEN-CHM-0001"
ZONES = ["UTC", "Asia/Kolkata", "America/New_York", "Europe/Berlin", "America/Sao_Paulo", "Asia/Dubai"]
# The routers' clock reads 15:00 UTC (moving at real speed): outside 22:00-08:00 in every
# zone above, so each message pays for the quiet-hours check and is then handed over.
# (With --quiet-share, that share of users lives in Pacific/Auckland, 04:00 there: held.)
CLOCK_AT_UTC_HOUR = 15
SETTINGS = {
    "caps": [{"channel": "push", "max": 3, "within": "7d"}, {"max": 10, "within": "1d"}, {"min_gap": "1m"}],
    "quiet_hours": {"start": "22:00", "end": "08:00", "action": "delay"},
}
MESSAGE = {"title": "Hi {{ profile.Name | default: 'there' }}", "body": "Your {{ event.Product }} is waiting"}
_encode = msgspec.msgpack.Encoder().encode


def user_of(i: int) -> str:
    return str(i)


def profile_of(i: int, quiet_share: float = 0.0) -> dict[str, Any]:
    held = (i % 1000) < quiet_share * 1000
    return {"Name": f"User {i}", "Push Token": f"token-{i}", "Tz": "Pacific/Auckland" if held else ZONES[i % len(ZONES)]}


class AfternoonClock:
    """Real time, shifted to start at CLOCK_AT_UTC_HOUR today."""

    manual = False

    def __init__(self) -> None:
        now = time.time()
        self._shift_ms = int(((now // 86_400) * 86_400 + CLOCK_AT_UTC_HOUR * 3600 - now) * 1000)

    async def now_ms(self) -> int:
        return int(time.time() * 1000) + self._shift_ms


class MemoryProfiles:
    def __init__(self, quiet_share: float) -> None:
        self._quiet_share = quiet_share

    async def profiles(self, account: str, users: list[str]) -> list[tuple[dict[str, Any], str] | None]:
        return [(profile_of(int(u), self._quiet_share), f"identity:{u}") for u in users]


class TimingProvider:
    channel = "push"

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def send(self, delivery: Delivery) -> Outcome:
        return (await self.send_many([delivery]))[0]

    async def send_many(self, deliveries: list[Delivery]) -> list[Outcome]:
        # Batched, as FCM's send_each is: the router hands over a round's messages at once.
        now = time.time()
        self.calls.extend((d.send_id, now) for d in deliveries)
        return [delivered() for _ in deliveries]

    async def close(self) -> None:
        return None


class BenchProviders:
    def __init__(self, provider: TimingProvider) -> None:
        parsed = parse_delivery_settings(SETTINGS)
        # The bench's provider stands in for FCM: the settings name a push provider.
        self._settings = msgspec.structs.replace(parsed, providers={"push": ("bench", None)})
        self._provider = provider

    async def settings(self, account: str) -> DeliverySettings:
        return self._settings

    async def provider(self, account: str, channel: str) -> TimingProvider:
        return self._provider


def request(i: int, at_ms: int) -> SendRequest:
    return SendRequest(f"{ACCOUNT}/bench/1/{i}/1/push", ACCOUNT, user_of(i), "push", MESSAGE, "bench", 1, "push",
                       at_ms, event={"Product": f"item {i % 97}"})


async def commit_requests(redis_url: str, first: int, count: int, rate: float | None) -> None:
    client = aioredis.Redis.from_url(redis_url)
    partition_map = PartitionMap(PARTITIONS, ROUTERS)
    batch = 200 if rate is None else max(1, int(rate / 100))
    started = time.monotonic()
    for start in range(first, first + count, batch):
        if rate is not None:
            # Paced: commit this batch when its time has come.
            delay = started + (start - first) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        now_ms = int(time.time() * 1000)
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + batch, first + count)):
                pipe.xadd(keys.outbox(partition_map.partition_of(ACCOUNT, user_of(i))),
                          {"s": _encode(request(i, now_ms))})
            await pipe.execute()
    await client.aclose()


def producer(redis_url: str, first: int, count: int, rate: float) -> None:
    asyncio.run(commit_requests(redis_url, first, count, rate))


def router_process(index: int, redis_url: str, expected: int, results: Any, quiet_share: float) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        partition_map = PartitionMap(PARTITIONS, ROUTERS)
        store = DeliveryStore(client, partition_map, partition_map.partitions_of(index))
        provider = TimingProvider()
        router = await ChannelRouter.open(store, MemoryProfiles(quiet_share), BenchProviders(provider), AfternoonClock())
        started, cpu = time.monotonic(), time.process_time()
        idle_since = None
        loop = asyncio.get_running_loop()
        while router.handled < expected:
            began = loop.time()
            taken = await router.step(block_ms=50)
            await router.linger_after(taken, began)  # as `ChannelRouter.run` does
            if taken:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 5:
                break
        await router.drain()
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
        stats = {k.decode(): int(v) for k, v in (await client.hgetall(keys.delivery_stats(ACCOUNT))).items()}
        results.put({"index": index, "handled": router.handled, "elapsed": elapsed, "cpu": cpu, "calls": provider.calls,
                     "stats": stats})
        await client.aclose()

    asyncio.run(run())


def expected_per_router(first: int, count: int) -> list[int]:
    partition_map = PartitionMap(PARTITIONS, ROUTERS)
    counts = [0] * ROUTERS
    for i in range(first, first + count):
        counts[partition_map.shard_of(partition_map.partition_of(ACCOUNT, user_of(i)))] += 1
    return counts


def run_routers(redis_url: str, expected: list[int], quiet_share: float) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    processes = [ctx.Process(target=router_process, args=(i, redis_url, expected[i], results, quiet_share))
                 for i in range(ROUTERS)]
    for p in processes:
        p.start()
    found = [results.get(timeout=600) for _ in processes]
    for p in processes:
        p.join()
    return found


def throughput(redis_url: str, first: int, messages: int, quiet_share: float) -> dict[str, Any]:
    asyncio.run(commit_requests(redis_url, first, messages, None))
    wall = time.monotonic()
    found = run_routers(redis_url, expected_per_router(first, messages), quiet_share)
    wall = time.monotonic() - wall
    handled = sum(r["handled"] for r in found)
    handed = sum(len(r["calls"]) for r in found)
    slowest = max(r["elapsed"] for r in found)
    return {"phase": "throughput", "quiet_share": quiet_share, "messages": messages, "decided": handled, "handed_to_provider": handed,
            "router_seconds": round(slowest, 2), "decided_per_s": round(handled / slowest),
            "handed_per_s": round(handed / slowest), "router_cpu_seconds": [round(r["cpu"], 2) for r in found], "wall_seconds_with_process_start": round(wall, 2),
            "outcomes": found[-1]["stats"]}


async def commit_times(redis_url: str) -> dict[str, int]:
    client = aioredis.Redis.from_url(redis_url)
    times: dict[str, int] = {}
    decoder = msgspec.msgpack.Decoder(SendRequest)
    for p in range(PARTITIONS):
        for _, fields in await client.xrange(keys.outbox(p)):
            sent = decoder.decode(fields[b"s"])
            times[sent.id] = sent.at_ms
    await client.aclose()
    return times


def latency(redis_url: str, first: int, messages: int, rate: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    expected = expected_per_router(first, messages)
    routers = [ctx.Process(target=router_process, args=(i, redis_url, expected[i], results, 0.0))
               for i in range(ROUTERS)]
    for p in routers:
        p.start()
    time.sleep(3)  # the routers are up and waiting on their outboxes
    feed = ctx.Process(target=producer, args=(redis_url, first, messages, rate))
    started = time.monotonic()
    feed.start()
    found = [results.get(timeout=600) for _ in routers]
    feed.join()
    for p in routers:
        p.join()
    committed = asyncio.run(commit_times(redis_url))
    waits = np.array([called * 1000 - committed[send_id] for r in found for send_id, called in r["calls"]
                      if int(send_id.split("/")[3]) >= first])
    return {"phase": "latency", "rate": rate, "messages": messages, "handed_to_provider": int(waits.size),
            "seconds": round(time.monotonic() - started, 2),
            "commit_to_provider_call_ms": {"p50": round(float(np.percentile(waits, 50)), 1),
                                           "p99": round(float(np.percentile(waits, 99)), 1),
                                           "max": round(float(waits.max()), 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--paced-messages", type=int, default=100_000)
    parser.add_argument("--quiet-share", type=float, default=0.3,
                        help="share of users inside quiet hours in the second throughput run")
    args = parser.parse_args()
    with embedded_redis() as (_, redis_url):
        print(json.dumps({"machine": machine(), **throughput(redis_url, 0, args.messages, 0.0)}), flush=True)
        print(json.dumps(throughput(redis_url, args.messages, args.messages, args.quiet_share)), flush=True)
        print(json.dumps(latency(redis_url, 2 * args.messages, args.paced_messages, args.rate)), flush=True)


if __name__ == "__main__":
    main()
