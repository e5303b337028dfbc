"""The send requests journeys commit, as the channel router reads them: one stream per
partition, in commit order. A request's `id` is stable, so a reader that stops
between delivering and noting how far it got delivers it again under the same id,
and the router's dedupe makes that once."""

from __future__ import annotations

import redis.asyncio as aioredis

from kairos import keys
from kairos.journeys.model import SendRequest, send_decoder


class OutboxReader:
    def __init__(self, client: aioredis.Redis, partitions: list[int], after: dict[int, str] | None = None) -> None:
        self._redis = client
        self.after: dict[str, str] = {keys.outbox(p): (after or {}).get(p, "0-0") for p in partitions}
        self._partition = {keys.outbox(p): p for p in partitions}

    async def read_entries(self, count: int = 1000, block_ms: int | None = None) -> list[tuple[int, str, SendRequest]]:
        """(partition, entry id, request) committed since the last read, waiting up to
        `block_ms` for one."""
        found = await self._redis.xread(self.after, count=count, block=block_ms)  # type: ignore[arg-type]
        out: list[tuple[int, str, SendRequest]] = []
        for stream, entries in found or []:
            name = stream.decode()
            self.after[name] = entries[-1][0].decode()
            out.extend((self._partition[name], entry_id.decode(), send_decoder.decode(fields[b"s"]))
                       for entry_id, fields in entries)
        return out

    async def read(self, count: int = 1000, block_ms: int | None = None) -> list[SendRequest]:
        """The requests committed since the last read (waiting up to `block_ms` for one)."""
        return [request for _, _, request in await self.read_entries(count, block_ms)]
