"""Where a journey actor's state lives in Redis, and how a step becomes durable.

Everything one step changed - positions, entry history, send requests, counters and
how far each input was read - goes in one MULTI/EXEC. A crash before it repeats the
step from the same inputs; a crash after it finds the step done. That is what makes
each send request appear in the outbox exactly once.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis

from kairos import keys
from kairos.journeys.engine import Changes, UserKey
from kairos.journeys.model import Position, position_decoder
from kairos.log import trim_through
from kairos.partitions import PartitionMap

SEP = "\x00"
_encode = msgspec.msgpack.encode
_entry_decoder = msgspec.msgpack.Decoder(tuple[int, int])  # (times entered, last entry ms)


def field(account: str, name: str, user: str) -> str:
    return f"{account}{SEP}{name}{SEP}{user}"


class JourneyStateStore:
    def __init__(self, client: aioredis.Redis, partition_map: PartitionMap, partitions: list[int]) -> None:
        self._redis = client
        self._map = partition_map
        self.partitions = partitions

    def partition_of(self, account: str, user: str) -> int:
        return self._map.partition_of(account, user)

    async def load_positions(self) -> list[tuple[str, str, str, Position]]:
        found = []
        for partition in self.partitions:
            async for raw_field, raw in self._redis.hscan_iter(keys.journey_positions(partition), count=5000):
                account, name, user = raw_field.decode().split(SEP, 2)
                found.append((account, name, user, position_decoder.decode(raw)))
        return found

    async def load_cursors(self) -> dict[int, dict[str, str]]:
        return {
            p: {k.decode(): v.decode() for k, v in (await self._redis.hgetall(keys.journey_cursors(p))).items()}
            for p in self.partitions
        }

    async def entries(self, wanted: list[UserKey]) -> list[tuple[int, int] | None]:
        by_partition: dict[int, list[int]] = {}
        for i, (account, _, user) in enumerate(wanted):
            by_partition.setdefault(self.partition_of(account, user), []).append(i)
        answers: list[tuple[int, int] | None] = [None] * len(wanted)
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition, positions in by_partition.items():
                pipe.hmget(keys.journey_entries(partition), [field(*wanted[i]) for i in positions])
            results = await pipe.execute()
        for positions, values in zip(by_partition.values(), results):
            for i, raw in zip(positions, values):
                if raw is not None:
                    answers[i] = _entry_decoder.decode(raw)
        return answers

    async def commit(self, changes: Changes, cursors: dict[int, dict[str, str]]) -> None:
        if not changes and not cursors:
            return
        upserts: dict[int, dict[str, bytes]] = {}
        deletes: dict[int, list[str]] = {}
        for (account, name, user), pos in changes.positions.items():
            partition = self.partition_of(account, user)
            if pos is None:
                deletes.setdefault(partition, []).append(field(account, name, user))
            else:
                upserts.setdefault(partition, {})[field(account, name, user)] = _encode(pos)
        entries: dict[int, dict[str, bytes]] = {}
        for (account, name, user), value in changes.entries.items():
            entries.setdefault(self.partition_of(account, user), {})[field(account, name, user)] = _encode(value)
        async with self._redis.pipeline(transaction=True) as pipe:
            for partition, mapping in upserts.items():
                pipe.hset(keys.journey_positions(partition), mapping=mapping)  # type: ignore[arg-type]
            for partition, names in deletes.items():
                pipe.hdel(keys.journey_positions(partition), *names)
            for partition, mapping in entries.items():
                pipe.hset(keys.journey_entries(partition), mapping=mapping)  # type: ignore[arg-type]
            for send in changes.sends:
                pipe.xadd(keys.outbox(self.partition_of(send.account, send.user)), {"s": _encode(send)})
            for (account, name), counters in changes.stats.items():
                stats_key = keys.journey_stats(account, name)
                for name_field, delta in counters.items():
                    if delta:
                        pipe.hincrby(stats_key, name_field, delta)
            for partition, values in cursors.items():
                if values:
                    pipe.hset(keys.journey_cursors(partition), mapping=values)  # type: ignore[arg-type]
            await pipe.execute()

    async def read(self, streams: dict[str, str], count: int, block_ms: int) -> list[tuple[str, list[Any]]]:
        """New entries of the given streams after the given ids (waits up to `block_ms`)."""
        if not streams:
            return []
        found = await self._redis.xread(streams, count=count, block=block_ms)  # type: ignore[arg-type]
        return [(stream.decode(), entries) for stream, entries in found or []]

    async def memory(self) -> dict[str, int]:
        total: dict[str, int] = {"positions_bytes": 0, "positions": 0}
        for partition in self.partitions:
            key = keys.journey_positions(partition)
            total["positions_bytes"] += int(await self._redis.memory_usage(key, samples=0) or 0)
            total["positions"] += int(await self._redis.hlen(key))
        return total

    async def last_id(self, stream: str) -> str:
        newest = await self._redis.xrevrange(stream, count=1)
        return newest[0][0].decode() if newest else "0-0"

    async def trim_through(self, stream: str, last_read: str) -> None:
        await trim_through(self._redis, stream, last_read)
