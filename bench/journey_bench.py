"""Journey benchmark: 1M users waiting in a journey at once.

0. Ingest alone, paced at --rate events/s, before any journey exists (for comparison).
1. 1M users enter an abandoned-checkout journey (wait up to 3 days for the matching
   order, else a push) through the gateway. Measures the journey actors' memory per
   waiting user (resident memory grown) and Redis's per position.
2. With them waiting, ingest runs paced at --rate events/s (half the maximum) while a
   trickle of "Signed Up" events enters a journey that sends at once: event->send
   latency from the upload leaving the client to the send request reaching an outbox
   reader, as the channel router would read it.
3. The clock jumps 3 days: every wait times out; timers fired (and pushes committed)
   per second.

    .venv/bin/python bench/journey_bench.py [--users 1000000] [--rate 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import msgspec  # noqa: E402
import ray  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from actors.heap import freeze_startup_objects  # noqa: E402
from bench.analytics_bench import upload  # noqa: E402
from bench.harness import ROOT, Running, embedded_redis, load_command, machine, running_kairos  # noqa: E402
from kairos.identity_graph import IdentityGraph  # noqa: E402
from kairos.journeys.catalog import JourneyCatalog  # noqa: E402
from kairos.journeys.clock import ManualClock  # noqa: E402
from kairos.journeys.outbox import OutboxReader  # noqa: E402

DAY_MS = 86_400_000

CHECKOUT = {
    "entry": {"event": "Checkout Started"}, "match_property": "CartId", "start": "wait_order",
    "nodes": {
        "wait_order": {"type": "wait_for_event", "event": "Order Completed", "match": True, "timeout": "3d",
                       "on_timeout": "push"},
        "push": {"type": "send", "channel": "push", "message": {"title": "Complete your order"}},
    },
    "goal": {"event": "Order Completed", "match": True},
}
WELCOME = {
    "entry": {"event": "Signed Up"}, "start": "hello",
    "nodes": {"hello": {"type": "send", "channel": "email", "message": {"subject": "Welcome", "text": "Welcome"}}},
}


def checkout_bodies(users: int, batch: int = 1000) -> Iterator[bytes]:
    for start in range(0, users, batch):
        # Stamped now: the manual clock starts at the real time, and an entry event over a
        # day old enters no journey.
        records = [{"identity": f"w{i}", "type": "event", "evtName": "Checkout Started", "ts": int(time.time()),
                    "evtData": {"CartId": f"c{i}", "Amount": i % 500}}
                   for i in range(start, min(users, start + batch))]
        yield msgspec.json.encode({"d": records})


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def refresh(running: Running, account: str) -> None:
    await asyncio.gather(*(s.refresh_triggers.remote(account) for s in running.deployment.shards),
                         *(j.refresh.remote(account) for j in running.deployment.journeys))


async def wait_for_counter(catalog: JourneyCatalog, account: str, name: str, field: str, target: int,
                           timeout_s: float) -> float:
    began = time.perf_counter()
    while (await catalog.stats(account, name)).get(field, 0) < target:
        if time.perf_counter() - began > timeout_s:
            raise RuntimeError(f"{name} {field} stuck at {(await catalog.stats(account, name)).get(field, 0)}")
        await asyncio.sleep(0.05)
    return time.perf_counter() - began


async def latency_probe(running: Running, client: aioredis.Redis, seconds: float, per_s: int) -> dict[str, Any]:
    """"Signed Up" for fresh users, one request each, `per_s` a second; returns the
    event->send latencies (upload sent -> send request read from the outbox)."""
    account = running.creds.account_id
    reader = OutboxReader(client, list(range(running.settings.partitions)))
    for stream in reader.after:
        newest = await client.xrevrange(stream, count=1)
        reader.after[stream] = newest[0][0].decode() if newest else "0-0"
    sent_at: dict[str, float] = {}
    acked_at: dict[str, float] = {}
    arrived: dict[str, float] = {}
    stop = asyncio.Event()

    async def read() -> None:
        while not stop.is_set() or len(arrived) < len(sent_at):
            for request in await reader.read(block_ms=100):
                if request.account == account and request.journey == "welcome":
                    arrived[request.user] = time.perf_counter()

    headers = {"X-CleverTap-Account-Id": account, "X-CleverTap-Passcode": running.creds.passcode,
               "Content-Type": "application/json"}
    # This process measures: its own collector's pauses would count as Kairos's latency.
    freeze_startup_objects()
    reading = asyncio.ensure_future(read())
    async with aiohttp.ClientSession(headers=headers) as session:
        async def one(identity: str) -> None:
            body = msgspec.json.encode({"d": [{"identity": identity, "type": "event", "evtName": "Signed Up",
                                               "ts": int(time.time()), "evtData": {}}]})
            sent_at[identity] = time.perf_counter()
            async with session.post(running.base_url + "/1/upload", data=body) as resp:
                await resp.read()
                acked_at[identity] = time.perf_counter()
                if resp.status != 200:
                    del sent_at[identity]

        tasks = []
        began = time.perf_counter()
        for n in range(int(seconds * per_s)):
            delay = began + n / per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(f"probe-{n}")))
        await asyncio.gather(*tasks)
    stop.set()
    await asyncio.wait_for(reading, timeout=30)
    identities = sorted(sent_at)
    users = await IdentityGraph(client).lookup(account, [f"identity:{i}" for i in identities])
    pairs = [(i, u) for i, u in zip(identities, users) if u in arrived]
    latencies = sorted((arrived[u] - sent_at[i]) * 1000 for i, u in pairs)
    # The same path split at the upload's answer: ingest (the upload acknowledged) and
    # what journeys add after it (negative when the send came before the answer did).
    acks = sorted((acked_at[i] - sent_at[i]) * 1000 for i, _ in pairs)
    after_ack = sorted((arrived[u] - acked_at[i]) * 1000 for i, u in pairs)

    def pct(values: list[float], p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 1)

    return {"probes": len(identities), "sends": len(latencies),
            "p50_ms": pct(latencies, 0.5), "p99_ms": pct(latencies, 0.99), "max_ms": round(latencies[-1], 1),
            "upload_ack_p50_ms": pct(acks, 0.5), "upload_ack_p99_ms": pct(acks, 0.99),
            "send_after_ack_p50_ms": pct(after_ack, 0.5), "send_after_ack_p99_ms": pct(after_ack, 0.99)}


async def scenario(running: Running, users: int, rate: float, seconds: float) -> dict[str, Any]:
    client = aioredis.Redis.from_url(running.redis_url)
    account = running.creds.account_id
    catalog = JourneyCatalog(client)
    # The same paced ingest before any journey exists: what ingest alone answers at that rate.
    alone = subprocess.run(load_command(running, seconds, 8, rate=rate / 500), cwd=ROOT, check=True,
                           capture_output=True, text=True)
    result: dict[str, Any] = {"ingest_alone": json.loads(alone.stdout.strip().splitlines()[-1])}
    await catalog.save(account, "checkout", CHECKOUT)
    await catalog.save(account, "welcome", WELCOME)
    await refresh(running, account)
    pids = [ray.get(j.pid.remote()) for j in running.deployment.journeys]
    before = sum(rss_bytes(p) for p in pids)

    entered, upload_s = await upload(running, checkout_bodies(users))
    wait_s = await wait_for_counter(catalog, account, "checkout", "v1|node|wait_order|waiting", users, 600)
    after = sum(rss_bytes(p) for p in pids)
    memory = [ray.get(j.memory.remote()) for j in running.deployment.journeys]
    redis_bytes = sum(m["positions_bytes"] for m in memory)
    waiting = sum(m["waiting_in_memory"] for m in memory)
    result.update({
        "users_waiting": waiting, "upload_events_per_s": round(entered / upload_s),
        "all_waiting_after_s": round(upload_s + wait_s, 1),
        "actor_rss_bytes_per_waiting_user": round((after - before) / waiting, 1),
        "redis_bytes_per_waiting_user": round(redis_bytes / waiting, 1),
    })
    print(json.dumps(result), flush=True)

    # Background ingest at `rate` events/s (500-event bodies), while probes measure latency.
    load = subprocess.Popen(load_command(running, seconds + 5, 8, rate=rate / 500), cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    await asyncio.sleep(2.0)
    result["latency"] = await latency_probe(running, client, seconds, per_s=100)
    out, _ = load.communicate(timeout=120)
    result["background_load"] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)

    await ManualClock(client).advance(3 * DAY_MS + 1)
    fire_s = await wait_for_counter(catalog, account, "checkout", "v1|node|push|sent|-", users, 1200)
    result["timers_fired"] = users
    result["timers_fired_per_s"] = round(users / fire_s)
    await client.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=50_000, help="background ingest, events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="latency probe duration")
    args = parser.parse_args()
    with embedded_redis() as (data_dir, url), running_kairos(data_dir, url, clock="manual") as running:
        result = asyncio.run(scenario(running, args.users, args.rate, args.seconds))
    result["machine"] = machine()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
