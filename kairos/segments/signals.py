"""Live segments' entry and exit signals, kept in one Redis stream per segment so that
journeys, campaigns and API clients read them from where they left off."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from kairos import keys
from kairos.segments.live import Signal

# Streams are trimmed (approximately) to this many signals each.
MAX_SIGNALS = 1_000_000


class SignalLog:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def emit(self, signals: list[Signal]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for s in signals:
                fields = {"u": s.user, "e": int(s.entered), "v": s.version, "t": s.at_ms}
                pipe.xadd(keys.segment_signals(s.account, s.segment), fields,  # type: ignore[arg-type]
                          maxlen=MAX_SIGNALS, approximate=True)
            await pipe.execute()

    async def read(self, account: str, segment: str, after: str, limit: int) -> list[dict[str, Any]]:
        page = await self._redis.xrange(keys.segment_signals(account, segment), min=f"({after}", max="+", count=limit)
        return [
            {"id": log_id.decode(), "user": f[b"u"].decode(), "entered": f[b"e"] == b"1",
             "version": int(f[b"v"]), "at_ms": int(f[b"t"])}
            for log_id, f in page
        ]
