"""Saved campaigns: per account in Redis, numbered as CleverTap numbers them.

A campaign is not edited once saved (its runs may be under way): it is stopped, and a
new one created. Stopping adds its id to a set the channel routers read before every
send, so what it queued and has not gone out yet never does.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from kairos import keys
from kairos.campaigns.definition import Campaign, CampaignError, parse_campaign
from kairos.campaigns.model import ACTIVE, STOPPED, SavedCampaign, saved_campaign_decoder
from kairos.journeys.clock import Clock
from kairos.segments.catalog import SegmentCatalog

MAX_ACTIVE_CAMPAIGNS = 1000
MAX_NAME_CHARS = 200
MAX_LABELS = 20


class CampaignCatalog:
    def __init__(self, client: aioredis.Redis, clock: Clock) -> None:
        self._redis = client
        self.clock = clock

    async def create(self, account: str, name: Any, definition: Any, api: str = "kairos",
                     labels: Any = None, description: Any = "") -> tuple[SavedCampaign, Campaign]:
        """Validates and saves the campaign; its id is the account's next number."""
        check_name(name)
        now = await self.clock.now_ms()
        campaign = parse_campaign(definition, now)
        await self.check_audience(account, campaign)
        labels = [] if labels is None else labels
        if not isinstance(labels, list) or len(labels) > MAX_LABELS \
                or not all(isinstance(x, str) and 0 < len(x) <= 100 for x in labels):
            raise CampaignError("labels", f"must be a list of at most {MAX_LABELS} names of 1-100 characters")
        if not isinstance(description, str) or len(description) > 1000:
            raise CampaignError("description", "is longer than 1000 characters")
        key = keys.campaigns(account)

        async def write(pipe: Pipeline) -> SavedCampaign:
            active = sum(1 for raw in (await pipe.hvals(key)) if saved_campaign_decoder.decode(raw).status == ACTIVE)
            if active >= MAX_ACTIVE_CAMPAIGNS:
                raise CampaignError("name", f"the account has {MAX_ACTIVE_CAMPAIGNS} active campaigns; stop some")
            campaign_id = int(await pipe.incr(keys.campaign_ids(account)))
            saved = SavedCampaign(campaign_id, name, definition, ACTIVE, now, api=api, labels=labels,
                                  description=description)
            pipe.multi()
            pipe.hset(key, str(campaign_id), msgspec.msgpack.encode(saved))
            pipe.sadd(keys.CAMPAIGN_ACCOUNTS, account)
            return saved

        saved = await self._redis.transaction(write, key, value_from_callable=True)
        return saved, campaign

    async def check_audience(self, account: str, campaign: Campaign) -> None:
        if campaign.audience_segment is not None:
            if await SegmentCatalog(self._redis).get(account, campaign.audience_segment) is None:
                raise CampaignError("definition.audience.segment",
                                    f"there is no saved segment named {campaign.audience_segment!r}")

    async def stop(self, account: str, campaign_id: int) -> SavedCampaign | None:
        """Stops the campaign (again, harmlessly); None if there is no such campaign."""
        key = keys.campaigns(account)
        now = await self.clock.now_ms()

        async def write(pipe: Pipeline) -> SavedCampaign | None:
            raw = await pipe.hget(key, str(campaign_id))
            if raw is None:
                return None
            saved = saved_campaign_decoder.decode(raw)
            pipe.multi()
            if saved.status != STOPPED:
                saved.status, saved.stopped_ms = STOPPED, now
                pipe.hset(key, str(campaign_id), msgspec.msgpack.encode(saved))
            pipe.sadd(keys.campaigns_stopped(account), str(campaign_id))
            return saved

        return await self._redis.transaction(write, key, value_from_callable=True)

    async def get(self, account: str, campaign_id: int) -> SavedCampaign | None:
        raw = await self._redis.hget(keys.campaigns(account), str(campaign_id))
        return saved_campaign_decoder.decode(raw) if raw else None

    async def all(self, account: str) -> list[SavedCampaign]:
        return _by_id(await self._redis.hvals(keys.campaigns(account)))

    async def accounts(self) -> list[str]:
        return sorted(a.decode() for a in await self._redis.smembers(keys.CAMPAIGN_ACCOUNTS))

    async def everything(self) -> dict[str, list[SavedCampaign]]:
        accounts = await self.accounts()
        async with self._redis.pipeline(transaction=False) as pipe:
            for account in accounts:
                pipe.hvals(keys.campaigns(account))
            found = await pipe.execute()
        return {account: _by_id(raw) for account, raw in zip(accounts, found)}

    async def stats(self, account: str, campaign_id: int) -> dict[str, int]:
        return (await self.stats_many(account, [campaign_id]))[0]

    async def stats_many(self, account: str, campaign_ids: list[int]) -> list[dict[str, int]]:
        """Each campaign's counters, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for campaign_id in campaign_ids:
                pipe.hgetall(keys.campaign_stats(account, campaign_id))
            found = await pipe.execute()
        return [{k.decode(): int(v) for k, v in raw.items()} for raw in found]


def _by_id(raw: list[bytes]) -> list[SavedCampaign]:
    return sorted((saved_campaign_decoder.decode(v) for v in raw), key=lambda c: c.id)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise CampaignError("name", f"must be a name of 1-{MAX_NAME_CHARS} characters")
    return name
