"""The time journeys wait by. Production reads the system clock; with
`KAIROS_CLOCK=manual` time moves only when told, and every actor (and every restart
of one) reads the same time from Redis, so a 7-day journey runs in a test's seconds."""

from __future__ import annotations

import time
from typing import Protocol

import redis.asyncio as aioredis

from kairos import keys


class Clock(Protocol):
    manual: bool

    async def now_ms(self) -> int: ...


class SystemClock:
    manual = False

    async def now_ms(self) -> int:
        return int(time.time() * 1000)


class ManualClock:
    manual = True

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def now_ms(self) -> int:
        raw = await self._redis.get(keys.MANUAL_CLOCK)
        if raw is None:
            # Starts at the real time, once: every reader after that sees the same value.
            await self._redis.set(keys.MANUAL_CLOCK, int(time.time() * 1000), nx=True)
            raw = await self._redis.get(keys.MANUAL_CLOCK)
        return int(raw)

    async def advance(self, ms: int) -> int:
        if ms < 0:
            raise ValueError("time does not go back")
        await self.now_ms()
        return int(await self._redis.incrby(keys.MANUAL_CLOCK, ms))

    async def set(self, at_ms: int) -> None:
        await self._redis.set(keys.MANUAL_CLOCK, at_ms)


def clock_for(kind: str, client: aioredis.Redis) -> Clock:
    """The clock `KAIROS_CLOCK` names: `manual` or `system`."""
    return ManualClock(client) if kind == "manual" else SystemClock()
