"""The aiohttp application: middlewares for errors and auth, and the API routes."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from aiohttp import web

from gateway.admission import Admission
from gateway.auth import Handler, auth_middleware
from gateway.backend import Backend, BackendUnavailable
from gateway.campaign_api import CampaignApi
from gateway.campaign_service import CampaignService
from gateway.clevertap import CleverTapApi
from gateway.clevertap_targets import CleverTapTargets
from gateway.delivery_api import DeliveryApi
from gateway.segment_api import SegmentApi
from gateway.ses_events_api import SesEventsApi
from gateway.tracking_api import TrackingApi
from gateway.errors import ApiError, error_for, json_response
from gateway.journey_api import JourneyApi
from gateway.kairos_api import KairosApi
from gateway.openapi import openapi_document
from kairos.accounts import Accounts
from kairos.campaigns.catalog import CampaignCatalog
from kairos.channels.in_app import Inbox
from kairos.channels.sns_messages import SnsVerifier
from kairos.config import Settings
from kairos.journeys.catalog import JourneyCatalog
from kairos.query_coordinator import QueryCoordinator
from kairos.routing.tracking import Tracker
from kairos.segments.catalog import SegmentCatalog
from kairos.segments.definition import SegmentError
from kairos.segments.signals import SignalLog

logger = logging.getLogger(__name__)
ADMISSION = web.AppKey("admission", Admission)


def _error_middleware(max_body_bytes: int) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        try:
            return await handler(request)
        except ApiError as exc:
            response = error_for(path, exc.status, exc.message, exc.path)
            if exc.close_connection:
                response.force_close()
            return response
        except SegmentError as exc:
            # A definition or query refused deeper down (a shard): still the caller's 400.
            return error_for(path, 400, str(exc), exc.path)
        except web.HTTPRequestEntityTooLarge:
            return error_for(path, 413, f"request body is larger than {max_body_bytes} bytes")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_for(path, exc.status, exc.reason)
        except BackendUnavailable as exc:
            return error_for(path, 503, f"service unavailable, retry later: {exc}")
        except ConnectionResetError:
            # The client went away mid-request; there is nobody to answer.
            logger.info("client disconnected during %s %s", request.method, request.path)
            raise
        except Exception:
            logger.exception("unhandled error on %s %s", request.method, request.path)
            return error_for(path, 500, "internal server error")

    return errors


async def _health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def create_app(settings: Settings, backend: Backend, accounts: Accounts, catalog: SegmentCatalog,
               signals: SignalLog, journeys: JourneyCatalog, campaigns: CampaignCatalog, client: aioredis.Redis,
               inbox: Inbox, tracker: Tracker) -> web.Application:
    admission = Admission(settings.max_inflight_uploads, settings.max_inflight_uploads_per_account)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_error_middleware(settings.max_body_bytes), auth_middleware(accounts)],
    )
    app[ADMISSION] = admission
    app.add_routes([web.get("/healthz", _health)])
    coordinator = QueryCoordinator(backend.partition_map, backend.call_shard)
    app.add_routes(CleverTapApi(backend, coordinator, admission, settings.max_body_bytes).routes())
    app.add_routes(SegmentApi(backend, accounts, admission, settings.max_body_bytes).routes())
    app.add_routes(KairosApi(coordinator, catalog, signals, journeys).routes())
    app.add_routes(JourneyApi(backend, journeys).routes())
    campaign_service = CampaignService(backend, coordinator, campaigns, catalog, client)
    app.add_routes(CampaignApi(campaign_service).routes())
    app.add_routes(CleverTapTargets(campaign_service).routes())
    app.add_routes(DeliveryApi(backend, client, inbox, settings.max_inbox_streams).routes())
    app.add_routes(TrackingApi(client, settings.partitions, tracker, inbox.clock).routes())
    sns = SnsVerifier(settings.sns_url_pattern)
    app.add_routes(SesEventsApi(client, sns, inbox.clock).routes())

    async def close_sns(app: web.Application) -> None:
        await sns.close()

    app.on_cleanup.append(close_sns)
    app.add_routes([web.get("/api/openapi.json", openapi_document)])
    return app
