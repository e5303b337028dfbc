"""The one place where Kairos's actor classes become Ray actors, with their options."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

import msgspec
import ray

from actors import names
from actors.campaign_scheduler import CampaignSchedulerActor
from actors.channel_router import ChannelRouterActor
from actors.gateway import GatewayActor
from actors.ingest import IngestActor
from actors.journey import JourneyActor
from actors.user_shard import UserShardActor
from kairos.config import Settings

NAMESPACE = names.NAMESPACE

# Shards rebuild themselves after a crash, and every method they expose is idempotent
# (batch ids dedupe retried appends, seals and absorbs go by state), so Ray may retry.
_RESTARTABLE = {"max_restarts": -1, "max_task_retries": -1}
# Actors mostly wait on I/O; reserving a whole CPU each would stop five of them from
# fitting on a 2-core machine. SPREAD places them over a cluster's nodes.
_PLACEMENT = {"num_cpus": 0, "scheduling_strategy": "SPREAD"}
# Per-call task events feed Ray's dashboard; at thousands of calls a second they cost
# CPU that ingest needs, and Kairos reports its own metrics.
_QUIET = {"enable_task_events": False}

# Coalesced batches run to megabytes. Ray passes arguments above this size through the
# object store, which costs 2-3x more per call than passing them inline.
# Read-only: `ray.init` writes its own keys into the dict it is given, so callers
# pass `ray_system_config()`, a fresh copy.
RAY_SYSTEM_CONFIG: Mapping[str, Any] = MappingProxyType({"max_direct_call_object_size": 16 * 1024 * 1024})


def ray_system_config() -> dict[str, Any]:
    return dict(RAY_SYSTEM_CONFIG)

UserShardRemote = ray.remote(**_RESTARTABLE, **_PLACEMENT, **_QUIET)(UserShardActor)
# An ingest call is not retried by Ray: its records' users come from the identity graph
# and the actor's cache, which can change between attempts (a merge in between), so a
# replay could route a record differently from the first attempt and lose or double it.
# A failed call answers 503 ("outcome unknown"); clients retry with their messageIds.
IngestRemote = ray.remote(max_restarts=-1, max_task_retries=0, **_PLACEMENT, **_QUIET)(IngestActor)
# Journey actors reload from Redis after a restart; refresh and move are idempotent.
JourneyRemote = ray.remote(**_RESTARTABLE, **_PLACEMENT, **_QUIET)(JourneyActor)
# Campaign schedulers reload cursors from Redis; refresh and start are idempotent.
CampaignSchedulerRemote = ray.remote(**_RESTARTABLE, **_PLACEMENT, **_QUIET)(CampaignSchedulerActor)
# Routers reload cursors and histories from Redis; stats and start are idempotent.
ChannelRouterRemote = ray.remote(**_RESTARTABLE, **_PLACEMENT, **_QUIET)(ChannelRouterActor)
GatewayRemote = ray.remote(max_restarts=-1, **_PLACEMENT, **_QUIET)(GatewayActor)


class Deployment(msgspec.Struct):
    shards: list[Any]
    ingest: list[Any]
    gateways: list[Any]
    journeys: list[Any]
    routers: list[Any]
    campaigns: list[Any]

    def ensure_serving(self) -> None:
        """(Re)start gateways, journey, campaign and channel-router loops, and the ingest actors' sweep
        of pending merges; actors restarted by Ray come back without them."""
        ray.get([i.start.remote() for i in self.ingest] + [j.start.remote() for j in self.journeys]
                + [c.start.remote() for c in self.campaigns] + [r.start.remote() for r in self.routers]
                + [g.start.remote() for g in self.gateways])

    def shutdown(self) -> None:
        ray.get([g.stop.remote() for g in self.gateways])
        for handle in self.gateways + self.routers + self.ingest + self.journeys + self.campaigns + self.shards:
            ray.kill(handle, no_restart=True)


def deploy(settings: Settings) -> Deployment:
    shards = [
        UserShardRemote.options(name=names.shard(i), namespace=NAMESPACE).remote(i, settings)
        for i in range(settings.shards)
    ]
    # Recovery (snapshot + log tail) happens here, before the gateway takes traffic.
    ray.get([shard.ready.remote() for shard in shards])
    journeys = [
        JourneyRemote.options(name=names.journey(i), namespace=NAMESPACE).remote(i, settings)
        for i in range(settings.shards)
    ]
    ingest = [
        IngestRemote.options(name=names.ingest(i), namespace=NAMESPACE).remote(settings)
        for i in range(settings.ingest_actors)
    ]
    campaigns = [
        CampaignSchedulerRemote.options(name=names.campaign_scheduler(i), namespace=NAMESPACE).remote(i, settings)
        for i in range(settings.shards)
    ]
    routers = [
        ChannelRouterRemote.options(name=names.channel_router(i), namespace=NAMESPACE).remote(i, settings)
        for i in range(settings.shards)
    ]
    gateways = [
        GatewayRemote.options(name=names.gateway(i), namespace=NAMESPACE).remote(settings)
        for i in range(settings.gateway_processes)
    ]
    deployment = Deployment(shards, ingest, gateways, journeys, routers, campaigns)
    deployment.ensure_serving()
    return deployment
