"""Saved segments: named definitions kept per account in Redis.

A definition is stored as the JSON its author sent (re-validated whenever it is
read), so what `GET` returns is exactly what was saved. Each save bumps `version`.
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from kairos import keys
from kairos.segments.definition import Condition, SegmentError, parse_segment

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:-]{0,119}\Z")
MAX_SEGMENTS = 1000


async def read_for_save(pipe: Pipeline, key: str, versions: str, name: str, limit: int,
                        too_many: SegmentError) -> tuple[bytes | None, int]:
    """Inside a WATCHed save of `name` into the catalog hash `key`: its stored value (None:
    new), and the version the save gets. Versions never repeat, not even after a delete:
    a version always names the definition that made it. A new name beyond `limit`
    entries raises `too_many`."""
    old_raw = await pipe.hget(key, name)
    if old_raw is None and await pipe.hlen(key) >= limit:
        raise too_many
    return old_raw, int(await pipe.hget(versions, name) or 0) + 1


class SavedSegment(msgspec.Struct):
    name: str
    definition: Any
    live: bool = False
    description: str = ""
    version: int = 1
    created_ms: int = 0
    updated_ms: int = 0

    def condition(self) -> Condition:
        return parse_segment(self.definition)


def check_name(name: str, kind: str = "segment") -> str:
    """The name of a saved segment (or journey: same rules), else a SegmentError."""
    if not NAME.match(name) or name != name.rstrip():
        raise SegmentError("name", f"{name[:130]!r} is not a {kind} name: 1-120 letters, digits, space, _ . : -,"
                                   " starting with a letter or digit, not ending with a space")
    return name


class SegmentCatalog:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def save(self, account: str, name: str, definition: Any, live: bool, description: str) -> SavedSegment:
        check_name(name)
        parse_segment(definition)
        if len(description) > 1000:
            raise SegmentError("description", "is longer than 1000 characters")
        key, versions = keys.segments(account), keys.segment_versions(account)
        now = int(time.time() * 1000)

        async def write(pipe: Pipeline) -> SavedSegment:
            old_raw, version = await read_for_save(pipe, key, versions, name, MAX_SEGMENTS, SegmentError(
                "name", f"the account already has {MAX_SEGMENTS} saved segments"))
            old = msgspec.msgpack.decode(old_raw, type=SavedSegment) if old_raw else None
            saved = SavedSegment(name, definition, live, description, version, old.created_ms if old else now, now)
            pipe.multi()
            pipe.hset(key, name, msgspec.msgpack.encode(saved))
            pipe.hset(versions, name, version)
            if live:
                pipe.sadd(keys.LIVE_SEGMENT_ACCOUNTS, account)
            return saved

        # WATCH makes the version bump and the limit check safe against a concurrent save.
        return await self._redis.transaction(write, key, versions, value_from_callable=True)

    async def get(self, account: str, name: str) -> SavedSegment | None:
        raw = await self._redis.hget(keys.segments(account), name)
        return msgspec.msgpack.decode(raw, type=SavedSegment) if raw else None

    async def all(self, account: str) -> list[SavedSegment]:
        raw = await self._redis.hgetall(keys.segments(account))
        found = [msgspec.msgpack.decode(v, type=SavedSegment) for v in raw.values()]
        return sorted(found, key=lambda s: s.name)

    async def delete(self, account: str, name: str) -> bool:
        """Forget the segment and its signals (its version number stays taken)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.segments(account), name)
            pipe.delete(keys.segment_signals(account, name))
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def live(self, account: str) -> list[SavedSegment]:
        return [s for s in await self.all(account) if s.live]

    async def all_live(self) -> dict[str, list[SavedSegment]]:
        """Every account's live segments (accounts that had one and no longer do: empty)."""
        accounts = sorted(a.decode() for a in await self._redis.smembers(keys.LIVE_SEGMENT_ACCOUNTS))
        return {account: await self.live(account) for account in accounts}
