"""Campaign benchmark: one campaign to --users users (1M by default) sent now, from its
creation to the last message handed to a local provider. Figures: time to first
message, how long the schedulers take to queue everyone, and the total send rate.

Two campaign schedulers and two channel routers (as `kairos up` runs one of each per
shard on a 2-core machine: four processes sharing two cores), real Redis (fsync
always, as deployed). The schedulers are the real ones: each takes its half of the
audience, splits it A/B with a 10% control group (who get `Notification Held Out`
events instead), and commits requests to the outboxes a chunk at a time; the routers
are the real ones too (dedupe, caps, quiet hours, templates, throttle bookkeeping,
transactional decisions and outcomes, delivery events), as in bench/delivery_bench.py.
Not measured here: the shard's evaluation of the audience's segment (each scheduler's
stand-in shard answers with its users at once; bench/analytics_bench.py measures
segment queries over the shards) and profile lookups (served from memory).

    .venv/bin/python bench/campaign_bench.py [--users 1000000]
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

import redis.asyncio as aioredis  # noqa: E402

from bench.delivery_bench import ACCOUNT, PARTITIONS, ROUTERS, BenchProviders, MemoryProfiles, TimingProvider  # noqa: E402
from bench.harness import embedded_redis, machine  # noqa: E402
from kairos.campaigns.catalog import CampaignCatalog  # noqa: E402
from kairos.campaigns.definition import parse_campaign  # noqa: E402
from kairos.campaigns.planning import CONTROL, assign  # noqa: E402
from kairos.campaigns.scheduler import CampaignScheduler  # noqa: E402
from kairos.campaigns.store import CampaignStore  # noqa: E402
from kairos.partitions import PartitionMap  # noqa: E402
from kairos.routing.delivery_store import DeliveryStore  # noqa: E402
from kairos.routing.router import ChannelRouter  # noqa: E402
from kairos.segments.catalog import SegmentCatalog  # noqa: E402

GO = "bench:campaign-go"
CAMPAIGN = {
    "audience": {"where": {"everyone": True}}, "schedule": "now", "control_percent": 10,
    "variants": [{"name": "A", "percent": 50, "channel": "push", "message": {"title": "Hi {{ profile.Name }}"}},
                 {"name": "B", "percent": 50, "channel": "push", "message": {"title": "Hey {{ profile.Name }}!"}}],
}

PARSED_CAMPAIGN = parse_campaign(CAMPAIGN, 0)


class SharedClock:
    """Real time, shifted by an offset every process is given: 15:00 UTC when the bench
    starts (outside quiet hours in every zone the profiles use), the same in each."""

    manual = False

    def __init__(self, shift_ms: int) -> None:
        self._shift_ms = shift_ms

    async def now_ms(self) -> int:
        return int(time.time() * 1000) + self._shift_ms


class PartitionAudience:
    """The shard's answer for one scheduler: its partitions' users (numbered 0..users-1)."""

    def __init__(self, users: list[str]) -> None:
        self.users = users

    async def segment_users(self, account: str, definition: Any, now_ms: int, tz: str) -> list[str]:
        return self.users

    async def time_zones(self, account: str, users: list[str]) -> list[str | None]:
        return [None] * len(users)

    async def identifiers(self, account: str, users: list[str]) -> list[str | None]:
        return [f"identity:{u}" for u in users]


def users_of(index: int, users: int) -> list[str]:
    partition_map = PartitionMap(PARTITIONS, ROUTERS)
    mine = set(partition_map.partitions_of(index))
    return [str(i) for i in range(users) if partition_map.partition_of(ACCOUNT, str(i)) in mine]


def scheduler_process(index: int, redis_url: str, users: int, shift_ms: int, results: Any) -> None:
    audience = PartitionAudience(users_of(index, users))

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        partition_map = PartitionMap(PARTITIONS, ROUTERS)
        clock = SharedClock(shift_ms)
        store = CampaignStore(client, partition_map, partition_map.partitions_of(index))
        scheduler = CampaignScheduler(store, CampaignCatalog(client, clock), SegmentCatalog(client), audience, clock,
                                      poll_ms=10)
        await scheduler.load()
        while not await client.exists(GO):
            await asyncio.sleep(0.001)
        started = time.time()
        await scheduler.refresh(ACCOUNT)  # what the gateway's create call does before it answers
        queued = 0
        while queued < len(audience.users):
            queued += await scheduler.step()
        results.put({"scheduler": index, "queued": queued, "started": started, "done": time.time(),
                     "steps": scheduler.steps})
        await client.aclose()

    asyncio.run(run())


def router_process(index: int, redis_url: str, expected: int, shift_ms: int, results: Any) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        partition_map = PartitionMap(PARTITIONS, ROUTERS)
        store = DeliveryStore(client, partition_map, partition_map.partitions_of(index))
        provider = TimingProvider()
        router = await ChannelRouter.open(store, MemoryProfiles(0.0), BenchProviders(provider), SharedClock(shift_ms))
        loop = asyncio.get_running_loop()
        while len(provider.calls) < expected:
            began = loop.time()
            taken = await router.step(block_ms=20)
            await router.linger_after(taken, began)  # as `ChannelRouter.run` does
        await router.drain()
        calls = [called for _, called in provider.calls]
        results.put({"router": index, "handed": len(calls), "first": min(calls), "last": max(calls)})
        await client.aclose()

    asyncio.run(run())


async def create_campaign(redis_url: str, shift_ms: int) -> float:
    client = aioredis.Redis.from_url(redis_url)
    await CampaignCatalog(client, SharedClock(shift_ms)).create(ACCOUNT, "bench", CAMPAIGN)
    created = time.time()
    await client.set(GO, 1)
    await client.aclose()
    return created


def run(redis_url: str, users: int) -> dict[str, Any]:
    now = time.time()
    shift_ms = int(((now // 86_400) * 86_400 + 15 * 3600 - now) * 1000)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    # Each router hands over its partitions' users, less the 10% held out: counted ahead.
    expected = []
    for index in range(ROUTERS):
        expected.append(sum(1 for u in users_of(index, users) if not _held_out(u)))
    processes = [ctx.Process(target=scheduler_process, args=(i, redis_url, users, shift_ms, results))
                 for i in range(ROUTERS)]
    processes += [ctx.Process(target=router_process, args=(i, redis_url, expected[i], shift_ms, results))
                  for i in range(ROUTERS)]
    for p in processes:
        p.start()
    time.sleep(8 + users / 200_000)  # every process is up, its audience in hand
    created = asyncio.run(create_campaign(redis_url, shift_ms))
    found = [results.get(timeout=1800) for _ in processes]
    for p in processes:
        p.join()
    schedulers = [r for r in found if "scheduler" in r]
    routers = [r for r in found if "router" in r]
    handed = sum(r["handed"] for r in routers)
    last = max(r["last"] for r in routers)
    return {
        "users": users, "handed_to_provider": handed, "held_out": users - handed,
        "time_to_first_message_ms": round((min(r["first"] for r in routers) - created) * 1000, 1),
        "all_queued_s": round(max(r["done"] for r in schedulers) - created, 2),
        "last_message_s": round(last - created, 2),
        "send_rate_per_s": round(handed / (last - created)),
        "scheduler_steps": [r["steps"] for r in schedulers],
    }


def _held_out(user: str) -> bool:
    """In the control group of the bench's campaign (the account's first: id 1)."""
    return assign(1, PARSED_CAMPAIGN, user) == CONTROL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    args = parser.parse_args()
    with embedded_redis() as (_, redis_url):
        print(json.dumps({"machine": machine(), **run(redis_url, args.users)}), flush=True)


if __name__ == "__main__":
    main()
