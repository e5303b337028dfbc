"""Analytics benchmark: 1M profiles and 20M events over 90 days, uploaded through the
gateway into the shards, then five queries through the Python client, and the same
queries in DuckDB on the same data in the same run. Prints each query's time on both
sides (best and median of --repeat runs), their ratio, whether the answers are equal,
and the shards' memory per event.

    .venv/bin/python bench/analytics_bench.py [--users 1000000] [--events 20000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402

from bench.analytics_data import (  # noqa: E402
    CATEGORIES, CITIES, DAYS, END_S, EVENT_NAMES, GENDERS, PRODUCTS, Data, event_bodies, generate, profile_bodies,
)
from bench.harness import Running, embedded_redis, machine, running_kairos  # noqa: E402
from kairos.analytics.rfm import SEGMENTS, segment_of  # noqa: E402
from kairos.client import KairosClient  # noqa: E402

END_MS = END_S * 1000
DAY_MS = 86_400_000
FROM_MS = END_MS - DAYS * DAY_MS


async def upload(running: Running, bodies: Iterator[bytes], concurrency: int = 8) -> tuple[int, float]:
    """POST every body with `concurrency` in flight; (records acknowledged, seconds)."""
    headers = {"X-CleverTap-Account-Id": running.creds.account_id, "X-CleverTap-Passcode": running.creds.passcode,
               "Content-Type": "application/json"}
    url = running.base_url + "/1/upload"
    done = 0
    began = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        async def worker() -> None:
            nonlocal done
            for body in bodies:  # a shared iterator: each body goes out once
                while True:
                    async with session.post(url, data=body) as resp:
                        answer = await resp.read()
                    if resp.status == 429:
                        await asyncio.sleep(0.01)
                        continue
                    if resp.status != 200:
                        raise RuntimeError(f"upload failed: {resp.status} {answer[:300]!r}")
                    done += json.loads(answer)["processed"]
                    break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - began


def duck_tables(data: Data) -> duckdb.DuckDBPyConnection:
    """The same data as native DuckDB tables (strings as VARCHAR, as a user would load them)."""
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.register("ev", {"user": data.user, "ts": data.ts_s * 1000, "name_code": data.name,
                        "category_code": data.category, "product_code": data.product, "amount": data.amount})
    con.register("pr", {"user": np.arange(data.users, dtype=np.int32), "city_code": data.city, "age": data.age,
                        "gender_code": data.gender})
    for table, values in (("names", EVENT_NAMES), ("categories", CATEGORIES), ("products", PRODUCTS),
                          ("cities", CITIES), ("genders", GENDERS)):
        con.register(table, {"code": np.arange(values.size, dtype=np.int16), "value": values.astype(object)})
    con.execute("""CREATE TABLE events AS SELECT ev.user, ev.ts, n.value AS name, c.value AS category,
                   p.value AS product, ev.amount FROM ev JOIN names n ON n.code = ev.name_code
                   JOIN categories c ON c.code = ev.category_code JOIN products p ON p.code = ev.product_code""")
    con.execute("""CREATE TABLE profiles AS SELECT pr.user, c.value AS city, pr.age, g.value AS gender FROM pr
                   JOIN cities c ON c.code = pr.city_code JOIN genders g ON g.code = pr.gender_code""")
    for name in ("ev", "pr", "names", "categories", "products", "cities", "genders"):
        con.unregister(name)
    return con


PROPERTY_FILTER = {"all": [{"profile": "City", "op": "eq", "value": "Pune"}, {"profile": "Age", "op": "gte", "value": 30}]}
BEHAVIOUR = {"did": "Charged", "where": [{"property": "Category", "op": "eq", "value": "Shoes"}], "within": "30d",
             "count": {"op": "gte", "value": 2}}
FUNNEL = ["Product Viewed", "Added To Cart", "Charged"]

SQL_PROPERTY_FILTER = "SELECT count(*) FROM profiles WHERE city = 'Pune' AND age >= 30"
SQL_BEHAVIOUR = f"""SELECT count(*) FROM (SELECT user FROM events WHERE name = 'Charged' AND category = 'Shoes'
                    AND ts >= {END_MS - 30 * DAY_MS} GROUP BY user HAVING count(*) >= 2)"""
SQL_FUNNEL = f"""
WITH s1 AS (SELECT user, min(ts) AS t1 FROM events WHERE name = 'Product Viewed' AND ts >= {FROM_MS} AND ts < {END_MS}
            GROUP BY user),
s2 AS (SELECT s1.user, s1.t1, min(e.ts) AS t2 FROM s1 JOIN events e ON e.user = s1.user AND e.name = 'Added To Cart'
       AND e.ts > s1.t1 AND e.ts <= s1.t1 + {DAY_MS} GROUP BY s1.user, s1.t1),
s3 AS (SELECT s2.user, s2.t1, s2.t2, min(e.ts) AS t3 FROM s2 JOIN events e ON e.user = s2.user AND e.name = 'Charged'
       AND e.ts > s2.t2 AND e.ts <= s2.t1 + {DAY_MS} GROUP BY s2.user, s2.t1, s2.t2)
SELECT (SELECT count(*) FROM s1), (SELECT count(*) FROM s2), (SELECT count(*) FROM s3),
       (SELECT median(t2 - t1) FROM s2), (SELECT median(t3 - t2) FROM s3), (SELECT median(t3 - t1) FROM s3)"""
SQL_RETENTION = f"""
WITH f AS (SELECT user, min(ts) AS first FROM events WHERE name = 'Product Viewed' GROUP BY user),
c AS (SELECT user, first, date_trunc('week', make_timestamp(first * 1000)) AS cohort FROM f
      WHERE first >= {FROM_MS} AND first < {END_MS}),
r AS (SELECT DISTINCT c.user, c.cohort,
             date_diff('day', c.cohort, date_trunc('week', make_timestamp(e.ts * 1000))) // 7 AS period
      FROM c JOIN events e ON e.user = c.user AND e.name = 'Charged' AND e.ts >= c.first)
SELECT strftime(cohort, '%Y-%m-%d'), -1, count(*) FROM c GROUP BY cohort
UNION ALL SELECT strftime(cohort, '%Y-%m-%d'), period, count(*) FROM r WHERE period < 12 GROUP BY cohort, period"""
_CASE = " ".join(f"WHEN r = {r} AND f = {f} THEN '{segment_of(r, f).replace(chr(39), chr(39) * 2)}'"
                 for r in range(1, 6) for f in range(1, 6))
SQL_RFM = f"""
WITH u AS (SELECT user, ({END_MS} - 1 - max(ts)) // {DAY_MS} AS recency, count(*) AS frequency,
                  sum(amount) AS monetary
           FROM events WHERE name = 'Charged' AND ts >= {FROM_MS} AND ts < {END_MS} GROUP BY user),
n AS (SELECT count(*) AS n FROM u),
s AS (SELECT u.*, least(5, 1 + (5 * (rank() OVER (ORDER BY recency DESC) - 1)) // n.n) AS r,
             least(5, 1 + (5 * (rank() OVER (ORDER BY frequency ASC) - 1)) // n.n) AS f FROM u, n)
SELECT CASE {_CASE} END AS segment, count(*), sum(monetary) FROM s GROUP BY segment"""


def timed(run: Callable[[], Any], repeat: int) -> tuple[Any, list[float]]:
    times, answer = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        answer = run()
        times.append(time.perf_counter() - began)
    return answer, times


def queries(kairos: KairosClient, con: duckdb.DuckDBPyConnection) -> list[tuple[str, Callable[[], Any],
                                                                              Callable[[], Any]]]:
    as_of = END_S

    def k_funnel() -> Any:
        steps = kairos.funnel(FUNNEL, "90d", "now", "1d", as_of=as_of)
        return [s["users"] for s in steps] + [steps[1]["median_seconds_from_previous"],
                                              steps[2]["median_seconds_from_previous"],
                                              steps[2]["median_seconds_from_entry"]]

    def d_funnel() -> Any:
        row = con.execute(SQL_FUNNEL).fetchone()
        return list(row[:3]) + [v / 1000 if v is not None else None for v in row[3:]]

    def k_retention() -> Any:
        answer = kairos.retention("Product Viewed", "Charged", "90d", "now", by="week", periods=12, as_of=as_of)
        return {(c["cohort"], -1): c["users"] for c in answer["cohorts"] if c["users"]} | {
            (c["cohort"], p): n for c in answer["cohorts"] for p, n in enumerate(c["retained"]) if n}

    def d_retention() -> Any:
        return {(cohort, period): n for cohort, period, n in con.execute(SQL_RETENTION).fetchall()}

    def k_rfm() -> Any:
        answer = kairos.rfm("Charged", "90d", "now", monetary="Amount", as_of=as_of)
        return {s["segment"]: (s["users"], s["monetary_sum"]) for s in answer["segments"] if s["users"]}

    def d_rfm() -> Any:
        return {seg: (n, float(money)) for seg, n, money in con.execute(SQL_RFM).fetchall()}

    return [
        ("property filter (City = Pune and Age >= 30)",
         lambda: kairos.segment_count(PROPERTY_FILTER, as_of=as_of),
         lambda: con.execute(SQL_PROPERTY_FILTER).fetchone()[0]),
        ("behaviour with an event-property filter (Charged Shoes >= 2 times in 30d)",
         lambda: kairos.segment_count(BEHAVIOUR, as_of=as_of),
         lambda: con.execute(SQL_BEHAVIOUR).fetchone()[0]),
        ("3-step funnel in 1 day over 90 days", k_funnel, d_funnel),
        ("12-week retention (Product Viewed -> Charged)", k_retention, d_retention),
        ("RFM over Charged in 90 days", k_rfm, d_rfm),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    assert len(SEGMENTS) == 10

    data = generate(args.users, args.events)
    report: dict[str, Any] = {"machine": machine(), "users": args.users, "events": args.events, "queries": []}
    with embedded_redis() as (data_dir, url), running_kairos(data_dir, url) as running:
        profiles, profile_s = asyncio.run(upload(running, profile_bodies(data)))
        events, event_s = asyncio.run(upload(running, event_bodies(data)))
        report["load"] = {"profiles": profiles, "profiles_per_s": round(profiles / profile_s),
                          "events": events, "events_per_s": round(events / event_s)}
        stats = ray.get([s.memory.remote() for s in running.deployment.shards])
        total = {k: sum(s[k] for s in stats) for k in stats[0]}
        report["shard_bytes_per_event"] = round((total["event_bytes"] + total["dictionary_bytes"]) / total["events"], 1)
        report["shard_bytes_per_profile"] = round(total["profile_bytes"] / total["users"], 1)
        began = time.perf_counter()
        con = duck_tables(data)
        report["duckdb_load_s"] = round(time.perf_counter() - began, 1)
        with KairosClient(running.base_url, running.creds.account_id, running.creds.passcode,
                          timeout_s=600) as kairos:
            for label, ours, theirs in queries(kairos, con):
                our_answer, our_times = timed(ours, args.repeat)
                their_answer, their_times = timed(theirs, args.repeat)
                report["queries"].append({
                    "query": label,
                    "kairos_s": {"best": round(min(our_times), 3), "median": round(statistics.median(our_times), 3)},
                    "duckdb_s": {"best": round(min(their_times), 3), "median": round(statistics.median(their_times), 3)},
                    "kairos_over_duckdb": round(statistics.median(our_times) / statistics.median(their_times), 2),
                    "equal_answers": our_answer == their_answer,
                    "answer": our_answer if not isinstance(our_answer, dict) else f"{len(our_answer)} groups",
                })
                if our_answer != their_answer:
                    report["queries"][-1]["duckdb_answer"] = str(their_answer)[:2000]
                    report["queries"][-1]["kairos_answer"] = str(our_answer)[:2000]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
