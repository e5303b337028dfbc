"""What both campaign APIs (Kairos's `/api/campaigns` and CleverTap's `/1/targets`) do:
create, estimate, stop, describe and report on campaigns.

Every change takes effect before the answer: each shard (which forwards trigger events)
and each campaign scheduler re-reads the account's campaigns first; a stop is in the
set the routers read before any send once it has returned.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis

from gateway.backend import Backend, BackendUnavailable
from kairos import keys
from kairos.analytics.campaign_results import ResultsQuery, combine_results
from kairos.campaigns import planning
from kairos.campaigns.catalog import CampaignCatalog
from kairos.campaigns.definition import Campaign, LocalTime, Recurring, SendAt, Triggered, parse_campaign
from kairos.campaigns.model import STOPPED, SavedCampaign
from kairos.campaigns.results import router_fields, variant_results
from kairos.query_coordinator import QueryCoordinator
from kairos.segments.catalog import SegmentCatalog
from kairos.timefmt import iso_ms

logger = logging.getLogger(__name__)
SCHEDULED, RUNNING, COMPLETED = "scheduled", "running", "completed"


class CampaignService:
    def __init__(self, backend: Backend, coordinator: QueryCoordinator, catalog: CampaignCatalog,
                 segments: SegmentCatalog, client: aioredis.Redis) -> None:
        self.backend = backend
        self.coordinator = coordinator
        self.catalog = catalog
        self.segments = segments
        self.redis = client

    async def _refresh(self, account: str) -> None:
        """Schedulers first, then shards: a trigger event a shard forwards for a new
        campaign must find every scheduler knowing it. An actor that cannot be reached
        now takes the change up on its own re-read (every CATALOG_RESYNC_S): the
        campaign is saved, and answering an error would make the client create it again."""
        shards = range(self.backend.partition_map.shards)
        for calls in ([self.backend.call_campaign(i, "refresh", account) for i in shards],
                      [self.backend.call_shard(i, "refresh_triggers", account) for i in shards]):
            for outcome in await asyncio.gather(*calls, return_exceptions=True):
                if isinstance(outcome, BackendUnavailable):
                    logger.warning("campaigns of %s: an actor will take the change up on its re-read: %s",
                                   account, outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome

    async def create(self, account: str, name: str, definition: Any, api: str, labels: list[str] | None = None,
                     description: str = "") -> SavedCampaign:
        saved, _ = await self.catalog.create(account, name, definition, api, labels, description)
        await self._refresh(account)
        return saved

    async def stop(self, account: str, campaign_id: int) -> SavedCampaign | None:
        saved = await self.catalog.stop(account, campaign_id)
        if saved is not None:
            await self._refresh(account)
        return saved

    async def estimate(self, account: str, definition: Any) -> int | None:
        """How many users the campaign would reach now (None: a triggered campaign reaches
        whoever does its event)."""
        now = await self.catalog.clock.now_ms()
        campaign = parse_campaign(definition, now)
        await self.catalog.check_audience(account, campaign)
        condition = await self._audience(account, campaign)
        if condition is None:
            return None
        return await self.coordinator.segment_count(account, condition, now, campaign.tz)

    async def _audience(self, account: str, campaign: Campaign) -> Any:
        if campaign.audience_segment is not None:
            segment = await self.segments.get(account, campaign.audience_segment)
            return segment.definition if segment is not None else {"any": []}
        return campaign.audience_where

    def status(self, saved: SavedCampaign, campaign: Campaign, counters: dict[str, int], now: int) -> str:
        if saved.status == STOPPED:
            return STOPPED
        if isinstance(campaign.schedule, Triggered):
            return RUNNING
        if isinstance(campaign.schedule, Recurring):
            end_ms = campaign.schedule.end_ms
            return COMPLETED if end_ms is not None and now >= end_ms else RUNNING
        run_ms = planning.latest_run(campaign, saved.created_ms, now)
        if run_ms is None:
            return SCHEDULED
        done = counters.get(f"done|{run_ms}", 0) >= self.backend.partition_map.shards
        return COMPLETED if done else RUNNING

    async def view(self, account: str, saved: SavedCampaign) -> dict[str, Any]:
        return (await self.views(account, [saved]))[0]

    async def views(self, account: str, saved: list[SavedCampaign]) -> list[dict[str, Any]]:
        """What the API shows of each campaign; their counters in one round trip."""
        every_counters = await self.catalog.stats_many(account, [s.id for s in saved])
        now = await self.catalog.clock.now_ms()
        return [self._view(item, counters, now) for item, counters in zip(saved, every_counters)]

    def _view(self, saved: SavedCampaign, counters: dict[str, int], now: int) -> dict[str, Any]:
        campaign = saved.parsed()
        following = planning.next_run(campaign, saved.created_ms, now) if saved.status != STOPPED else None
        return {
            "id": saved.id, "name": saved.name, "status": self.status(saved, campaign, counters, now),
            "api": saved.api, "schedule": schedule_kind(campaign), "created": iso_ms(saved.created_ms),
            "stopped": iso_ms(saved.stopped_ms) if saved.stopped_ms else None,
            "next_run": iso_ms(following) if following is not None else None,
            "labels": saved.labels, "description": saved.description, "definition": saved.definition,
            "counters": {name: value for name, value in sorted(counters.items()) if not name.startswith("done|")},
        }

    async def results(self, account: str, saved: SavedCampaign) -> dict[str, Any]:
        campaign = saved.parsed()
        counters = await self.catalog.stats(account, saved.id)
        fields = router_fields(saved.id, [v.name for v in campaign.variants])
        values = await self.redis.hmget(keys.delivery_stats(account), fields) if fields else []
        delivery = {field: int(value) for field, value in zip(fields, values) if value is not None}
        goal = campaign.goal
        query = ResultsQuery(str(saved.id), goal.event if goal else None, list(goal.raw_where) if goal else [],
                             goal.within_ms if goal else 0)
        now = await self.catalog.clock.now_ms()
        answers = await self.coordinator.scatter("campaign_results", account, query, now)
        engagement = combine_results([part for answer in answers for part in answer])
        table = variant_results(saved.id, [v.name for v in campaign.variants], campaign.control_percent > 0,
                                counters, delivery, engagement)
        return {
            "id": saved.id, "name": saved.name, "status": self.status(saved, campaign, counters, now),
            "audience": counters.get("audience", 0), "runs": counters.get("runs", 0),
            "triggered": counters.get("triggered", 0), "missed_slot": counters.get("missed_slot", 0),
            "conversion_goal": {"event": goal.event, "within_ms": goal.within_ms} if goal else None,
            **table,
        }


def schedule_kind(campaign: Campaign) -> str:
    schedule = campaign.schedule
    if isinstance(schedule, SendAt):
        return "at"
    if isinstance(schedule, LocalTime):
        return "local_time"
    if isinstance(schedule, Recurring):
        return "recurring"
    return "triggered"
