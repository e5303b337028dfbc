"""The shard's side of journeys and triggered campaigns: which events to forward, and
the inboxes they go to.

A shard forwards only the events some journey of the account reacts to (entry, wait,
goal and exit events of any saved version) to the journey inbox, and those that trigger
an active campaign to the campaign inbox, so accounts without either cost nothing.
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
from kairos.campaigns.definition import Triggered
from kairos.campaigns.model import ACTIVE, SavedCampaign
from kairos.journeys.definition import parse_journey
from kairos.journeys.model import CATALOG_RESYNC_S, SavedJourney, Trigger, trigger_list_encoder

logger = logging.getLogger(__name__)

# Inbox entries kept per partition; journey actors trim what they have read long before.
MAX_INBOX_ENTRIES = 1_000_000


class JourneySource(Protocol):
    async def all(self, account: str) -> list[SavedJourney]: ...

    async def everything(self) -> dict[str, list[SavedJourney]]: ...


class CampaignSource(Protocol):
    async def all(self, account: str) -> list[SavedCampaign]: ...

    async def everything(self) -> dict[str, list[SavedCampaign]]: ...



class TriggerForwarding:
    def __init__(self, source: JourneySource, client: aioredis.Redis, campaigns: CampaignSource | None = None) -> None:
        self._source = source
        self._campaigns = campaigns
        self._redis = client
        # account -> events to forward; partitions hold this same dict and read it as they apply.
        self.interest: dict[str, frozenset[str]] = {}
        # account -> the events for its journeys, and for its triggered campaigns.
        self.journey_interest: dict[str, frozenset[str]] = {}
        self.campaign_interest: dict[str, frozenset[str]] = {}
        self._resync: asyncio.Task[None] | None = None
        # Loads and refreshes one at a time: a full load that read the catalog before a
        # refresh must not put the older picture back after it.
        self._lock = asyncio.Lock()
        # (account, journey, created, version) -> its events: a resync parses only what is new.
        self._names: dict[tuple[str, str, int, int], frozenset[str]] = {}
        # (account, campaign id, created) -> the event that triggers it (None: not triggered).
        self._triggers: dict[tuple[str, int, int], str | None] = {}

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

    def campaign_events(self, account: str, saved: list[SavedCampaign]) -> frozenset[str]:
        """The events that trigger the account's active campaigns."""
        names = set()
        for campaign in saved:
            key = (account, campaign.id, campaign.created_ms)
            if key not in self._triggers:  # campaigns never change once saved: parse each once
                schedule = campaign.parsed().schedule
                self._triggers[key] = schedule.event if isinstance(schedule, Triggered) else None
            event = self._triggers[key]
            if campaign.status == ACTIVE and event is not None:
                names.add(event)
        return frozenset(names)

    async def load(self) -> None:
        """Every account's journeys (at start); then again every CATALOG_RESYNC_S."""
        await self._load()
        if self._resync is None or self._resync.done():
            self._resync = asyncio.ensure_future(self._resync_forever())

    async def _load(self) -> None:
        async with self._lock:
            everything = await self._source.everything()
            campaigns = await self._campaigns.everything() if self._campaigns is not None else {}
            self.journey_interest = {account: self.events_for(account, saved) for account, saved in everything.items()}
            self.campaign_interest = {account: self.campaign_events(account, saved)
                                      for account, saved in campaigns.items()}
            self._merge(set(everything) | set(campaigns), clear=True)

    def _merge(self, accounts: set[str], clear: bool = False) -> None:
        """Sets `interest` (which the partitions read) for `accounts` from both halves."""
        if clear:
            self.interest.clear()
        for account in accounts:
            events = self.journey_interest.get(account, frozenset()) | self.campaign_interest.get(account, frozenset())
            if events:
                self.interest[account] = events
            else:
                self.interest.pop(account, None)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(CATALOG_RESYNC_S)
            try:
                await self._load()
            except Exception:
                logger.exception("could not re-read journeys; trying again in %ss", CATALOG_RESYNC_S)

    async def refresh(self, account: str) -> list[str]:
        """Take up the account's journeys and campaigns as saved now; returns the events
        forwarded for them."""
        async with self._lock:
            self.journey_interest[account] = self.events_for(account, await self._source.all(account))
            if self._campaigns is not None:
                self.campaign_interest[account] = self.campaign_events(account, await self._campaigns.all(account))
            self._merge({account})
            return sorted(self.interest.get(account, ()))

    async def write(self, items: list[tuple[int, str, list[Trigger]]]) -> None:
        """(partition, log id, triggers) -> the partition's inboxes, in log order."""
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition, log_id, triggers in items:
                for inbox, interest in ((keys.journey_inbox(partition), self.journey_interest),
                                        (keys.campaign_inbox(partition), self.campaign_interest)):
                    wanted = [t for t in triggers if t.event in interest.get(t.account, ())]
                    if wanted:
                        pipe.xadd(inbox, {"t": trigger_list_encoder.encode(wanted)}, id=log_id,
                                  maxlen=MAX_INBOX_ENTRIES, approximate=True)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, ResponseError) and "equal or smaller" in str(result):
                continue  # written before a crash: a replay finds it there
            if isinstance(result, Exception):
                raise result
