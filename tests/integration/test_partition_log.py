"""The partition log's snapshots against a real redis-server: a manifest of megabytes
is written in pieces, and what a reader sees is always a whole manifest."""

from __future__ import annotations

import itertools
import os
from typing import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from kairos import keys
from kairos.log import RedisPartitionLog
from kairos.redis_server import EmbeddedRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Far above any partition the session's runtime owns, so the tests never touch its logs.
_partitions = itertools.count(90_000)


@pytest_asyncio.fixture
async def client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_server.url)
    first = next(_partitions)
    yield connection
    # The session's Redis is shared: leave none of these tests' megabytes in it.
    for partition in range(first, next(_partitions)):
        pattern = keys.partition_stream(partition).removesuffix("log") + "*"
        found = [key async for key in connection.scan_iter(match=pattern)]
        if found:
            await connection.delete(*found)
    await connection.aclose()


async def test_a_manifest_of_megabytes_is_stored_whole_and_replaces_the_last(client: aioredis.Redis) -> None:
    log, partition = RedisPartitionLog(client), next(_partitions)
    entries = await log.append([(partition, f"b{i}", b"x") for i in range(3)])
    big = os.urandom(3 * 1024 * 1024 + 17)  # several write pieces, the last a short one
    chunks = {"acct/ts/0": os.urandom(512 * 1024), "acct/ts/1": os.urandom(1000)}
    await log.save_snapshot(partition, big, entries[1], chunks)
    assert await log.load_snapshot(partition) == big
    assert await log.load_chunks(partition, list(chunks)) == chunks
    assert not await client.exists(keys.partition_snapshot_staging(partition))
    # Replay starts after the covered id: the entry after it is still in the log.
    assert [e[1] for e in await log.read_after(partition, entries[1])] == ["b2"]

    small = b"a newer, smaller manifest"
    await log.save_snapshot(partition, small, entries[2], {})
    assert await log.load_snapshot(partition) == small


async def test_a_staging_manifest_left_by_a_crash_does_not_leak_into_the_next(client: aioredis.Redis) -> None:
    log, partition = RedisPartitionLog(client), next(_partitions)
    await log.save_snapshot(partition, b"first", "0-1", {})
    # A shard that died halfway through writing its next manifest left this behind; the
    # current manifest is untouched by it.
    await client.set(keys.partition_snapshot_staging(partition), b"half of a manifest that never finished")
    assert await log.load_snapshot(partition) == b"first"
    manifest = os.urandom(600 * 1024)
    await log.save_snapshot(partition, manifest, "0-2", {})
    assert await log.load_snapshot(partition) == manifest
