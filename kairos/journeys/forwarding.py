"""The shard's side of journeys: which events to forward, and the inbox they go to.

A shard forwards only the events some journey of the account reacts to (entry, wait,
goal and exit events of any saved version), so accounts without journeys cost nothing.
Each log batch's forwarded events become one inbox entry whose id is the batch's log
id: a batch replayed after a crash adds nothing the first run already added, and one
whose entry was lost before the crash adds it now.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from kairos import keys
from kairos.journeys.definition import parse_journey
from kairos.journeys.model import CATALOG_RESYNC_S, SavedJourney, Trigger, trigger_list_encoder

logger = logging.getLogger(__name__)

# Inbox entries kept per partition; journey actors trim what they have read long before.
MAX_INBOX_ENTRIES = 1_000_000


class JourneySource(Protocol):
    async def all(self, account: str) -> list[SavedJourney]: ...

    async def everything(self) -> dict[str, list[SavedJourney]]: ...


class JourneyForwarding:
    def __init__(self, source: JourneySource, client: aioredis.Redis) -> None:
        self._source = source
        self._redis = client
        # account -> events to forward; partitions hold this same dict and read it as they apply.
        self.interest: dict[str, frozenset[str]] = {}
        self._resync: asyncio.Task[None] | None = None
        # Loads and refreshes one at a time: a full load that read the catalog before a
        # refresh must not put the older picture back after it.
        self._lock = asyncio.Lock()
        # (account, journey, created, version) -> its events: a resync parses only what is new.
        self._names: dict[tuple[str, str, int, int], frozenset[str]] = {}

    def events_for(self, account: str, saved: list[SavedJourney]) -> frozenset[str]:
        """The events any version of the account's journeys reacts to."""
        names: set[str] = set()
        for journey in saved:
            for version, definition in journey.definitions.items():
                key = (account, journey.name, journey.created_ms, version)
                if key not in self._names:
                    self._names[key] = frozenset(parse_journey(definition).event_names())
                names |= self._names[key]
        return frozenset(names)

    async def load(self) -> None:
        """Every account's journeys (at start); then again every CATALOG_RESYNC_S."""
        await self._load()
        if self._resync is None or self._resync.done():
            self._resync = asyncio.ensure_future(self._resync_forever())

    async def _load(self) -> None:
        async with self._lock:
            everything = await self._source.everything()
            found = {account: self.events_for(account, saved) for account, saved in everything.items()}
            self.interest.clear()
            self.interest.update({a: e for a, e in found.items() if e})

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(CATALOG_RESYNC_S)
            try:
                await self._load()
            except Exception:
                logger.exception("could not re-read journeys; trying again in %ss", CATALOG_RESYNC_S)

    async def refresh(self, account: str) -> list[str]:
        async with self._lock:
            events = self.events_for(account, await self._source.all(account))
            if events:
                self.interest[account] = events
            else:
                self.interest.pop(account, None)
            return sorted(events)

    async def write(self, items: list[tuple[int, str, list[Trigger]]]) -> None:
        """(partition, log id, triggers) -> the partition's inbox, in log order."""
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition, log_id, triggers in items:
                pipe.xadd(keys.journey_inbox(partition), {"t": trigger_list_encoder.encode(triggers)}, id=log_id,
                          maxlen=MAX_INBOX_ENTRIES, approximate=True)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, ResponseError) and "equal or smaller" in str(result):
                continue  # written before a crash: a replay finds it there
            if isinstance(result, Exception):
                raise result
