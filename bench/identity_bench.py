"""Identity benchmark: ingest when 30% of records need the identity graph, and merges/s.

After loading 100,000 known customers, a separate process posts CleverTap upload bodies
of 500 records: 70% events of known customers, 15% events of never-seen devices (a
Redis lookup that creates a user) and 15% logins tying an earlier device to a customer
(a merge, moving the device's data across shards). Then a merge-heavy run: half the
records create devices, half merge earlier ones. Prints events/s acknowledged, p50/p99,
the share of records that needed the graph, and merges per second.

    .venv/bin/python bench/identity_bench.py [--seconds 30] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from bench.harness import Running, embedded_redis, machine, run_load, running_kairos  # noqa: E402
from kairos import keys  # noqa: E402
from kairos.config import load_settings  # noqa: E402


def measured(kairos: Running, seconds: float, concurrency: int, workload: str, seed: int) -> dict[str, Any]:
    before = kairos.ingest_stats()
    load = run_load(kairos, seconds, concurrency, seed=seed, workload=workload)
    after = kairos.ingest_stats()
    delta = {k: after[k] - before[k] for k in ("identity_lookups", "merges", "rerouted")}
    wall = load["seconds"]
    return {
        "workload": workload,
        "seconds": round(wall, 1),
        "events_per_s": round(load["events_per_s"]),
        "p50_ms": round(load["p50_ms"], 1),
        "p99_ms": round(load["p99_ms"], 1),
        "statuses": load["statuses"],
        "records_resolved_in_redis_share": round(delta["identity_lookups"] / max(load["events"], 1), 3),
        "merges_per_s": round(delta["merges"] / wall),
        "lookups_per_s": round(delta["identity_lookups"] / wall),
        "records_rerouted": delta["rerouted"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()

    with embedded_redis() as (data_dir, url):
        with running_kairos(data_dir, url) as kairos:
            run_load(kairos, 3600, args.concurrency, max_requests=200, workload="customers")
            run_load(kairos, 3, args.concurrency, seed=0, workload="identity")  # warm-up
            mixed = measured(kairos, args.seconds, args.concurrency, "identity", seed=1)
            merges = measured(kairos, args.seconds / 2, args.concurrency, "merges", seed=2)
            pending = redis.Redis.from_url(url).hlen(keys.PENDING_MERGES)
    report = {
        "machine": machine(),
        "concurrency": args.concurrency,
        "redis_appendfsync": load_settings().redis_fsync,
        "mixed_30_percent": mixed,
        "merge_heavy": merges,
        "merges_left_pending": pending,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
