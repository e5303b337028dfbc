"""Where a campaign scheduler's progress lives in Redis, and how a step becomes durable.

A step's send requests, the control group's `Notification Held Out` events, the
campaigns' counters and how far each run (and the trigger inbox) has got go in one
MULTI/EXEC, as a journey step's do: a crash before it repeats the step, a crash after
it finds the step done, so each request reaches the outbox once.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis

from kairos import keys
from kairos.journeys.model import SendRequest
from kairos.log import trim_through
from kairos.models import Record
from kairos.partitions import PartitionMap
from kairos.routing import feedback

SEP = "\x00"
_encode = msgspec.msgpack.encode


class RunCursor(msgspec.Struct, array_like=True, frozen=True):
    """How far a scheduler has got with a campaign: run `run_ms`, every user up to
    (`due_ms`, `user`) in its order queued; `done`: the whole run."""

    run_ms: int
    due_ms: int = 0
    user: str = ""
    done: bool = False


run_cursor_decoder = msgspec.msgpack.Decoder(RunCursor)


def run_field(account: str, campaign_id: int) -> str:
    return f"run{SEP}{account}{SEP}{campaign_id}"


class Commit:
    """What one step changed, to be made durable together."""

    def __init__(self) -> None:
        self.sends: list[tuple[int, SendRequest]] = []  # (partition, request)
        self.events: dict[tuple[int, str], list[Record]] = {}  # (partition, account) -> records
        self.stats: dict[tuple[str, int], dict[str, int]] = {}
        self.cursors: dict[str, RunCursor] = {}  # run field -> cursor (every partition of the scheduler)
        self.inbox: dict[int, str] = {}  # partition -> last inbox entry read
        self.reached: dict[tuple[str, int, int], list[str]] = {}  # (account, campaign, partition) -> users

    def count(self, account: str, campaign_id: int, field: str, n: int = 1) -> None:
        fields = self.stats.setdefault((account, campaign_id), {})
        fields[field] = fields.get(field, 0) + n

    def __bool__(self) -> bool:
        return bool(self.sends or self.events or self.stats or self.cursors or self.inbox or self.reached)


class CampaignStore:
    def __init__(self, client: aioredis.Redis, partition_map: PartitionMap, partitions: list[int]) -> None:
        self.redis = client
        self._map = partition_map
        self.partitions = partitions

    def partition_of(self, account: str, user: str) -> int:
        return self._map.partition_of(account, user)

    async def load_cursors(self) -> tuple[dict[str, RunCursor], dict[int, str]]:
        """Each campaign's run cursor (the least over the partitions: they are written
        together, but a partition moved here from elsewhere may be behind), and how far
        each partition's inbox is read."""
        runs: dict[str, RunCursor] = {}
        inbox: dict[int, str] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in self.partitions:
                pipe.hgetall(keys.campaign_cursors(partition))
            every = await pipe.execute()
        for partition, raw in zip(self.partitions, every):
            for name, value in raw.items():
                name = name.decode()
                if name == "inbox":
                    inbox[partition] = value.decode()
                    continue
                cursor = run_cursor_decoder.decode(value)
                held = runs.get(name)
                if held is None or _order(cursor) < _order(held):
                    runs[name] = cursor
        return runs, inbox

    async def reached(self, account: str, campaign_id: int, users: list[str]) -> list[bool]:
        """Whether each user was already taken by a `once`-per-user triggered campaign."""
        by_partition: dict[int, list[int]] = {}
        for i, user in enumerate(users):
            by_partition.setdefault(self.partition_of(account, user), []).append(i)
        found = [False] * len(users)
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, positions in by_partition.items():
                pipe.smismember(keys.campaign_reached(account, campaign_id, partition), [users[i] for i in positions])
            answers = await pipe.execute()
        for positions, flags in zip(by_partition.values(), answers):
            for i, flag in zip(positions, flags):
                found[i] = bool(flag)
        return found

    async def commit(self, commit: Commit) -> None:
        if not commit:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for partition, request in commit.sends:
                pipe.xadd(keys.outbox(partition), {"s": _encode(request)})
            for (partition, account), records in commit.events.items():
                feedback.append(pipe, partition, account, records)
            for (account, campaign_id), counters in commit.stats.items():
                for name, delta in counters.items():
                    if delta:
                        pipe.hincrby(keys.campaign_stats(account, campaign_id), name, delta)
            for (account, campaign_id, partition), users in commit.reached.items():
                pipe.sadd(keys.campaign_reached(account, campaign_id, partition), *users)
            fields: dict[str, bytes] = {name: _encode(cursor) for name, cursor in commit.cursors.items()}
            for partition in self.partitions:
                mapping = dict(fields)
                if partition in commit.inbox:
                    mapping["inbox"] = commit.inbox[partition].encode()
                if mapping:
                    pipe.hset(keys.campaign_cursors(partition), mapping=mapping)  # type: ignore[arg-type]
            await pipe.execute()

    async def read_inbox(self, after: dict[str, str], count: int, block_ms: int | None) -> list[tuple[str, list[Any]]]:
        found = await self.redis.xread(after, count=count, block=block_ms)  # type: ignore[arg-type]
        return [(stream.decode(), entries) for stream, entries in found or []]

    async def trim_through(self, stream: str, last_read: str) -> None:
        await trim_through(self.redis, stream, last_read)


def _order(cursor: RunCursor) -> tuple[int, bool, int, str]:
    return cursor.run_ms, cursor.done, cursor.due_ms, cursor.user
