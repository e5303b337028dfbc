"""Delivery events back into the users' event streams: the router writes them (in the
same transaction as the outcome they report), and the gateway's tracking endpoints the
opens and clicks, to the partitions' delivery-event streams; this forwarder hands them
to ingest and deletes them once ingest has them. Each record carries a messageId made
from its send id, so one forwarded twice (a crash between the hand-over and the delete)
counts once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from kairos import keys
from kairos.models import Record

logger = logging.getLogger(__name__)

Sink = Callable[[str, list[Record]], Awaitable[None]]  # (account, records) -> durable in ingest
_records_decoder = msgspec.msgpack.Decoder(list[Record])
_records_encoder = msgspec.msgpack.Encoder()
# A forwarder that stays down this long behind loses the oldest events, not the memory.
DELIVERY_EVENTS_KEPT = 1_000_000


def append(client: aioredis.Redis | Pipeline, partition: int, account: str, records: list[Record]) -> Any:
    """Queues one account's `records` for ingest (the forwarder of `partition` takes them):
    awaitable on a client, queued on a pipeline."""
    return client.xadd(keys.delivery_events(partition), {"a": account, "r": _records_encoder.encode(records)},
                       maxlen=DELIVERY_EVENTS_KEPT, approximate=True)


class FeedbackForwarder:
    def __init__(self, client: aioredis.Redis, partitions: list[int], sink: Sink) -> None:
        self._redis = client
        self._streams = {keys.delivery_events(p): "0-0" for p in partitions}
        self._sink = sink

    async def step(self, count: int = 5000, block_ms: int | None = None) -> int:
        """Forwards what is waiting; how many records went."""
        # Always from the start: forwarded entries are deleted, so what is left is due.
        found = await self._redis.xread(self._streams, count=count, block=block_ms)  # type: ignore[arg-type]
        sent = 0
        for stream, entries in found or []:
            by_account: dict[str, list[Record]] = {}
            for _, fields in entries:
                by_account.setdefault(fields[b"a"].decode(), []).extend(_records_decoder.decode(fields[b"r"]))
            for account, records in by_account.items():
                await self._sink(account, records)
            await self._redis.xdel(stream, *[entry_id for entry_id, _ in entries])
            sent += len(entries)
        return sent

    async def run(self, stopping: asyncio.Event, idle_ms: int = 200) -> None:
        while not stopping.is_set():
            try:
                await self.step(block_ms=idle_ms)
            except asyncio.CancelledError:
                raise
            except Exception:  # ingest restarting, Redis failing over: what is left stays queued
                logger.exception("forwarding delivery events to ingest failed; retrying")
                await asyncio.sleep(1.0)
