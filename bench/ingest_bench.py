"""Ingest benchmark: the HTTP gateway driven from a separate process.

Prints events/s acknowledged (durable), p50/p99 acknowledgement latency, memory per
event and per profile in the shards and bytes per event in Redis, and the floor for the
same batches (msgspec decode + one XADD per batch, no Ray) with our/floor ratio.

    .venv/bin/python bench/ingest_bench.py [--seconds 30] [--concurrency 10] [--memory-events 5000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402
import ray  # noqa: E402
import redis  # noqa: E402

from bench.harness import embedded_redis, machine, run_load, running_kairos  # noqa: E402
from bench.workload import make_bodies  # noqa: E402
from kairos.config import load_settings  # noqa: E402
from kairos.models import UploadBody  # noqa: E402


def floor_rate(url: str, seconds: float) -> float:
    """The same bodies, decoded by msgspec and written with one XADD each, no Ray."""
    bodies = make_bodies(64, seed=99)
    decoder, encoder = msgspec.json.Decoder(UploadBody), msgspec.msgpack.Encoder()
    client = redis.Redis.from_url(url)
    events, i = 0, 0
    deadline = time.perf_counter() + seconds
    began = time.perf_counter()
    while time.perf_counter() < deadline:
        batch = decoder.decode(bodies[i % len(bodies)]).d
        client.xadd("bench:floor", {"d": encoder.encode(batch)})
        events += len(batch)
        i += 1
    rate = events / (time.perf_counter() - began)
    client.delete("bench:floor")
    client.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--memory-events", type=int, default=5_000_000,
                        help="load this many events in all before measuring memory (0: skip)")
    args = parser.parse_args()

    fsync = load_settings().redis_fsync  # KAIROS_REDIS_FSYNC picks the durability level measured
    with embedded_redis() as (data_dir, url):
        floor = floor_rate(url, min(args.seconds, 10))
        with running_kairos(data_dir, url) as kairos:
            run_load(kairos, 3, args.concurrency, seed=0)  # warm-up
            load = run_load(kairos, args.seconds, args.concurrency)
            loaded = load["events"]
            coalescing = kairos.ingest_stats()
            if args.memory_events:
                probe = ray.get([s.memory.remote() for s in kairos.deployment.shards])
                remaining = args.memory_events - sum(p["events"] for p in probe)
                if remaining > 0:
                    run_load(kairos, 3600, args.concurrency, max_requests=-(-remaining // 500), seed=2)
            stats = ray.get([s.memory.remote() for s in kairos.deployment.shards])
            total = {k: sum(s[k] for s in stats) for k in stats[0]}
            info = redis.Redis.from_url(url).info("memory")

    ours = load["events_per_s"]
    events, users = total["events"], total["users"]
    report = {
        "machine": machine(),
        "concurrency": args.concurrency,
        "redis_appendfsync": fsync,
        "seconds": round(load["seconds"], 1),
        "events_acked": loaded,
        "events_per_s": round(ours),
        "p50_ms": round(load["p50_ms"], 1),
        "p99_ms": round(load["p99_ms"], 1),
        "statuses": load["statuses"],
        "coalescing": coalescing,
        "floor_events_per_s": round(floor),
        "ours_over_floor": round(ours / floor, 3),
        "stored_events": events,
        "profiles": users,
        "shard_bytes_per_event": round((total["event_bytes"] + total["dictionary_bytes"]) / events, 1),
        "shard_bytes_per_profile": round(total["profile_bytes"] / users, 1),
        "redis_used_memory_bytes_per_event": round(info["used_memory"] / events, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
