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
from kairos.coalesce import linger
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
    # After a round that found events, wait this long before the next: each hand-over is
    # an ingest call plus a shard append, far dearer than the events it carries, and one
    # every few sends would cost more CPU than the sends. The sends are not delayed; their
    # delivery events reach profiles, segments and results up to this much later.
    LINGER_MS = 100
    # Records per ingest call: one account's backlog goes in calls of bounded size.
    MAX_RECORDS_PER_CALL = 10_000

    def __init__(self, client: aioredis.Redis, partitions: list[int], sink: Sink, linger_ms: int = LINGER_MS) -> None:
        self._redis = client
        self._streams = {keys.delivery_events(p): "0-0" for p in partitions}
        self._sink = sink
        self._linger_s = linger_ms / 1000
        self.backlog = False  # the last round left entries behind (a stream came back full)

    async def step(self, count: int = 5000, block_ms: int | None = None) -> int:
        """Forwards what is waiting, in as few ingest calls per account as the size bound
        allows; how many entries went. An account whose call fails keeps its entries
        queued; the other accounts' go, and the first error is raised after."""
        # Always from the start: forwarded entries are deleted, so what is left is due.
        found = await self._redis.xread(self._streams, count=count, block=block_ms)  # type: ignore[arg-type]
        self.backlog = any(len(entries) >= count for _, entries in found or [])
        if not found:
            return 0
        by_account: dict[str, tuple[list[Record], dict[bytes, list[bytes]]]] = {}
        for stream, entries in found:
            for entry_id, fields in entries:
                records, ids = by_account.setdefault(fields[b"a"].decode(), ([], {}))
                records.extend(_records_decoder.decode(fields[b"r"]))
                ids.setdefault(stream, []).append(entry_id)
        done: dict[bytes, list[bytes]] = {}
        failure: Exception | None = None
        try:
            for account, (records, ids) in by_account.items():
                try:
                    for start in range(0, len(records), self.MAX_RECORDS_PER_CALL):
                        await self._sink(account, records[start : start + self.MAX_RECORDS_PER_CALL])
                except Exception as exc:  # this account's ingest actor is down; the others go on
                    failure = failure or exc
                    continue
                for stream, entry_ids in ids.items():
                    done.setdefault(stream, []).extend(entry_ids)
        finally:
            if done:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for stream, entry_ids in done.items():
                        pipe.xdel(stream, *entry_ids)
                    await pipe.execute()
        if failure is not None:
            raise failure
        return sum(len(ids) for ids in done.values())

    async def run(self, stopping: asyncio.Event, idle_ms: int = 200) -> None:
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            try:
                began = loop.time()
                if await self.step(block_ms=idle_ms) and not self.backlog:
                    await linger(began, self._linger_s, stopping)
            except asyncio.CancelledError:
                raise
            except Exception:  # ingest restarting, Redis failing over: what is left stays queued
                logger.exception("forwarding delivery events to ingest failed; retrying")
                await asyncio.sleep(1.0)
