"""Load generator, run as its own process: POSTs upload bodies for a fixed time (or a
fixed number of requests) with N requests in flight; prints a JSON result line."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

from bench.workload import IdentityWorkload, customer_bodies, make_bodies


async def run(url: str, account: str, passcode: str, seconds: float, max_requests: int,
              concurrency: int, seed: int, workload: str = "events", rate: float = 0.0) -> dict[str, object]:
    """`rate`: requests per second over all workers (0: as fast as answers come)."""
    if workload in ("identity", "merges"):
        # Bodies are made as they are sent: their identifiers must be new each time.
        # "merges": half the records create devices, half merge earlier ones.
        share = {"new_devices": 250, "logins": 250} if workload == "merges" else {}
        makers = [IdentityWorkload(seed * 1000 + w, **share) for w in range(concurrency)]
        next_body = lambda worker, i: makers[worker].body()  # noqa: E731
    else:
        # 400 bodies x 500 events touch ~86% of the 100,000 users; more than a run sends.
        bodies = customer_bodies() if workload == "customers" else make_bodies(400, seed=seed)
        next_body = lambda worker, i: bodies[i % len(bodies)]  # noqa: E731
    headers = {"X-CleverTap-Account-Id": account, "X-CleverTap-Passcode": passcode,
               "Content-Type": "application/json; charset=utf-8"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    acked_events = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async def worker(worker_id: int) -> None:
            nonlocal acked_events, sent
            i = worker_id
            while time.perf_counter() < deadline and sent < max_requests:
                slot = sent
                sent += 1  # claimed before sleeping: each worker waits for a slot of its own
                if rate:
                    # Paced: request n leaves at began + n / rate, however slow the last answer.
                    delay = began + slot / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                body = next_body(worker_id, i)
                i += concurrency
                start = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    payload = await resp.read()
                elapsed = time.perf_counter() - start
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    latencies.append(elapsed)
                    acked_events += json.loads(payload)["processed"]
                elif resp.status == 429:
                    await asyncio.sleep(0.005)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    return {"events": acked_events, "seconds": wall, "events_per_s": acked_events / wall,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "statuses": statuses, "requests": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("--passcode", required=True)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-requests", type=int, default=10**9)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="requests per second (0: unpaced)")
    parser.add_argument("--workload", choices=("events", "identity", "merges", "customers"), default="events")
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.account, args.passcode, args.seconds, args.max_requests,
                             args.concurrency, args.seed, args.workload, args.rate))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
