"""Durability: shards killed mid-stream lose no acknowledged event and count none twice."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis

from kairos import keys
from tests.integration.conftest import event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def _upload_until_acknowledged(api: Any, records: list[dict[str, Any]]) -> int:
    """What a careful client does: retry the same records (same messageIds) until a 200."""
    for _ in range(200):
        status, body = await api.upload(records)
        if status == 200:
            assert body["processed"] == len(records), body
            return len(records)
        assert status in (429, 503), (status, body)
        await asyncio.sleep(0.05)
    raise AssertionError("upload never acknowledged")


@pytest.mark.parametrize("message_ids", [True, False], ids=["client-message-ids", "batch-ids-only"])
async def test_shards_killed_mid_stream_lose_nothing_and_double_nothing(
    make_api: Any, kairos: Any, message_ids: bool
) -> None:
    """Without messageIds only the batch ids of Ray's own retries stand between a crash
    and a double count, so in that variant every upload must succeed first time."""
    api = await make_api()
    shards = kairos.deployment.shards
    pids_before = [await s.pid.remote() for s in shards]
    writers_done = asyncio.Event()

    async def writer(w: int) -> int:
        acked = 0
        for batch in range(25):
            records = [event(f"w{w}-u{i}", "Durable", seq=batch) for i in range(120)]
            if message_ids:
                records = [{**r, "messageId": f"{w}-{batch}-{i}"} for i, r in enumerate(records)]
                acked += await _upload_until_acknowledged(api, records)
            else:
                status, body = await api.upload(records)
                assert (status, body["processed"]) == (200, 120), body
                acked += 120
        return acked

    async def killer() -> None:
        await asyncio.sleep(0.4)
        import ray

        ray.kill(shards[0], no_restart=False)  # Ray kills and restarts the actor
        await asyncio.sleep(0.6)
        os.kill(pids_before[1], signal.SIGKILL)  # the worker process dies under it
        await writers_done.wait()

    kill_task = asyncio.create_task(killer())
    acked = sum(await asyncio.gather(*(writer(w) for w in range(4))))
    writers_done.set()
    await kill_task

    pids_after = [await s.pid.remote() for s in shards]
    assert all(a != b for a, b in zip(pids_before, pids_after)), "both shards must have been restarted"
    assert acked == 4 * 25 * 120
    assert await api.count_events("Durable") == acked
    profiles = await api.download("profiles", "Durable", batch_size=5000)
    assert len(profiles) == 4 * 120
    assert all(p["events"]["Durable"]["count"] == 25 for p in profiles)


async def test_recovery_from_snapshot_plus_log_tail(make_api: Any, kairos: Any, redis_server: Any) -> None:
    api = await make_api()
    shards = kairos.deployment.shards
    client = aioredis.Redis.from_url(redis_server.url)
    streams = [keys.partition_stream(p) for p in range(kairos.settings.partitions)]
    try:
        # 120 uploads of 100 users each: over 100 log entries per partition, so the
        # streams span several nodes and there is something to trim.
        for i in range(120):
            await _upload_until_acknowledged(api, [event(f"s{j % 500}", "Before Snapshot") for j in range(i * 100, i * 100 + 100)])
        before = [await client.xlen(s) for s in streams]
        await asyncio.gather(*(s.snapshot_all.remote() for s in shards))
        after = [await client.xlen(s) for s in streams]
        # Trimming is approximate (whole stream nodes of up to 100 entries), so a snapshot
        # leaves at most one node per stream, all of it covered, never the whole log.
        assert max(after) <= 100 and sum(after) < sum(before), f"logs not trimmed: {before} -> {after}"
        assert all([await client.exists(keys.partition_snapshot(p)) for p in range(kairos.settings.partitions)])
    finally:
        await client.aclose()

    await _upload_until_acknowledged(api, [event(f"s{i}", "After Snapshot") for i in range(300)])
    await _upload_until_acknowledged(api, [{"identity": "s1", "type": "profile", "profileData": {"Tier": "gold"}}])
    import ray

    for shard in shards:
        ray.kill(shard, no_restart=False)
    memory = [await s.memory.remote() for s in shards]  # waits for the restarted shards
    assert sum(m["replayed_entries"] for m in memory) > 0, "the tail after the snapshot must be replayed"

    assert await api.count_events("Before Snapshot") == 12_000
    assert await api.count_events("After Snapshot") == 300
    status, body = await api.profile(identity="s1")
    assert status == 200
    assert body["record"]["profileData"] == {"Tier": "gold"}
    assert body["record"]["events"]["Before Snapshot"]["count"] == 24
    assert body["record"]["events"]["After Snapshot"]["count"] == 1
