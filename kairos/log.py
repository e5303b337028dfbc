"""The durable log: one Redis stream per partition, plus the partition's snapshot.

Each stream entry holds one batch as `{b: batch id, d: msgpack LogBatch}`. A group of
entries bound for several partitions is written in one MULTI/EXEC, so a shard's flush
is durable as a whole or not at all.
"""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis

from kairos import keys

_READ_PAGE = 2000
# Chunks are up to 512 KB. Redis is single-threaded, and with fsync `always` it syncs
# each write before the next command: a few chunks per read, and one chunk or 512 KB of
# manifest per write, keep each command short, so the XADDs of live traffic are not
# stuck behind a snapshot's megabytes.
_CHUNK_PAGE = 4
_WRITE_PIECE = 512 * 1024


def stream_id_order(stream_id: str) -> tuple[int, int]:
    """A Redis stream id ("<ms>-<seq>") as a sortable pair."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def trim_through(client: aioredis.Redis, stream: str, last_read: str) -> None:
    """Drop a stream's entries up to and including `last_read` (read and committed)."""
    ms, seq = stream_id_order(last_read)
    await client.xtrim(stream, minid=f"{ms}-{seq + 1}", approximate=True)


class PartitionLog(Protocol):
    async def append(self, entries: list[tuple[int, str, bytes]]) -> list[str]:
        """Append (partition, batch id, payload) entries; return their log ids, in order."""
        ...

    async def read_after(self, partition: int, after_id: str) -> list[tuple[str, str, bytes]]:
        """Entries (log id, batch id, payload) with an id greater than `after_id`."""
        ...

    async def load_snapshot(self, partition: int) -> bytes | None:
        """The latest snapshot manifest, if any."""
        ...

    async def load_chunks(self, partition: int, chunk_ids: list[str]) -> dict[str, bytes]: ...

    async def save_snapshot(self, partition: int, manifest: bytes, covers_id: str, chunks: dict[str, bytes]) -> None:
        """Store new chunks, then the manifest, then drop the log entries it covers. A crash
        in between leaves the previous manifest, whose chunks are all still there."""
        ...

    async def stream_bytes(self, partition: int) -> int: ...


class RedisPartitionLog:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def append(self, entries: list[tuple[int, str, bytes]]) -> list[str]:
        async with self._redis.pipeline(transaction=True) as pipe:
            for partition, batch_id, payload in entries:
                pipe.xadd(keys.partition_stream(partition), {"b": batch_id, "d": payload})
            ids = await pipe.execute()
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    async def read_after(self, partition: int, after_id: str) -> list[tuple[str, str, bytes]]:
        stream = keys.partition_stream(partition)
        out: list[tuple[str, str, bytes]] = []
        start = f"({after_id}"
        while True:
            page = await self._redis.xrange(stream, min=start, max="+", count=_READ_PAGE)
            for log_id, fields in page:
                log_id = log_id.decode()
                out.append((log_id, fields[b"b"].decode(), fields[b"d"]))
            if len(page) < _READ_PAGE:
                return out
            start = f"({out[-1][0]}"

    async def load_snapshot(self, partition: int) -> bytes | None:
        return await self._redis.get(keys.partition_snapshot(partition))

    async def load_chunks(self, partition: int, chunk_ids: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for start in range(0, len(chunk_ids), _CHUNK_PAGE):
            page = chunk_ids[start : start + _CHUNK_PAGE]
            values = await self._redis.mget([keys.partition_chunk(partition, c) for c in page])
            for chunk_id, value in zip(page, values):
                if value is None:
                    raise LookupError(f"partition {partition} snapshot names chunk {chunk_id!r}, which is missing")
                found[chunk_id] = value
        return found

    async def save_snapshot(self, partition: int, manifest: bytes, covers_id: str, chunks: dict[str, bytes]) -> None:
        for chunk_id, chunk in chunks.items():
            await self._redis.set(keys.partition_chunk(partition, chunk_id), chunk)
        # The manifest (megabytes for a partition of many users) is written in pieces to
        # a staging key, which then replaces the current one at once: a crash midway
        # leaves the previous manifest, and the next snapshot starts its staging over.
        staging = keys.partition_snapshot_staging(partition)
        view = memoryview(manifest)
        await self._redis.set(staging, view[:_WRITE_PIECE])
        for start in range(_WRITE_PIECE, len(manifest), _WRITE_PIECE):
            await self._redis.append(staging, view[start : start + _WRITE_PIECE])
        # Only a whole manifest replaces the last one: were a stale writer of the same
        # partition (a process not yet gone after a restart) appending too, its pieces
        # would make the length wrong, and this snapshot is dropped instead.
        written = await self._redis.strlen(staging)
        if written != len(manifest):
            raise RuntimeError(f"partition {partition}: staged manifest is {written} bytes, not {len(manifest)}")
        await self._redis.rename(staging, keys.partition_snapshot(partition))
        # MINID keeps entries >= covers_id, and replay starts after the covered id anyway.
        # Approximate trimming drops whole stream nodes only: far cheaper for Redis than
        # an exact trim, at the price of a few covered entries left until the next one.
        await self._redis.xtrim(keys.partition_stream(partition), minid=covers_id, approximate=True)

    async def stream_bytes(self, partition: int) -> int:
        return int(await self._redis.memory_usage(keys.partition_stream(partition), samples=0) or 0)
