"""Open and click tracking endpoints, reached by users' mail clients and apps (no account
credentials: the sealed token says which account, user and message; see
kairos.routing.tracking).

    GET /t/o/<token>   records `Notification Viewed`, answers a 1x1 transparent GIF
    GET /t/d/<token>   records `Notification Delivered` (a push's arrival, reported by
                       the app: FCM itself says nothing once it has taken a message), 204
    GET /t/c/<token>   records `Notification Clicked` (and Viewed: a click means the
                       message was seen, even with its images blocked), then redirects
                       to the link; 204 when the message had no link (an in-app tap)

The events are queued durably (one Redis stream append, with the user's other delivery
events, which the channel router forwards to ingest) before the answer goes out, so a
reader never waits on ingest. An arrival or a view counts once per message, a click once
per message and link: the event ids are derived from the send id, and ingest drops an id
it has seen. HEAD requests (link scanners probing a URL) are answered without recording.
"""

from __future__ import annotations

import hashlib

import redis.asyncio as aioredis
from aiohttp import web

from gateway.errors import ApiError
from kairos.journeys.clock import Clock
from kairos.models import Record
from kairos.routing import feedback
from kairos.routing.delivery_events import CLICKED, DELIVERED, VIEWED, notification_event
from kairos.routing.delivery_store import received
from kairos.routing.tracking import CLICK_PATH, DELIVERED_PATH, OPEN_PATH, BadToken, TrackedLink, Tracker

# The smallest transparent GIF.
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
_NO_STORE = {"Cache-Control": "no-store, max-age=0"}


class TrackingApi:
    def __init__(self, client: aioredis.Redis, partitions: int, tracker: Tracker, clock: Clock) -> None:
        self.redis = client
        self.partitions = partitions
        self.tracker = tracker
        self.clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [web.get(OPEN_PATH + "{token}", self.opened), web.get(CLICK_PATH + "{token}", self.clicked),
                web.get(DELIVERED_PATH + "{token}", self.arrived)]

    def _link(self, request: web.Request) -> TrackedLink:
        try:
            return self.tracker.read(request.match_info["token"])
        except BadToken as exc:
            raise ApiError(400, str(exc)) from None

    async def _record(self, link: TrackedLink, events: list[Record]) -> None:
        if not 0 <= link.partition < self.partitions:
            raise ApiError(400, "the tracking token names a partition this deployment does not have")
        async with self.redis.pipeline(transaction=False) as pipe:
            feedback.append(pipe, link.partition, link.sent.account, events)
            # Any sign of the message (arrival, view, tap) tells a router awaiting its
            # arrival that no fallback is needed.
            received(pipe, link.partition, link.sent.send_id)
            await pipe.execute()

    async def opened(self, request: web.Request) -> web.Response:
        link = self._link(request)
        if request.method == "GET":
            await self._record(link, [notification_event(link.sent, VIEWED, await self.clock.now_ms())])
        return web.Response(body=PIXEL, content_type="image/gif", headers=_NO_STORE)

    async def arrived(self, request: web.Request) -> web.Response:
        link = self._link(request)
        if request.method == "GET":
            await self._record(link, [notification_event(link.sent, DELIVERED, await self.clock.now_ms())])
        return web.Response(status=204, headers=_NO_STORE)

    async def clicked(self, request: web.Request) -> web.Response:
        link = self._link(request)
        if request.method == "GET":
            now = await self.clock.now_ms()
            extra = {"Url": link.url} if link.url else None
            suffix = "|" + hashlib.sha256(link.url.encode()).hexdigest()[:16] if link.url else ""
            await self._record(link, [notification_event(link.sent, VIEWED, now),
                                      notification_event(link.sent, CLICKED, now, extra, suffix)])
        if link.url is None:
            return web.Response(status=204, headers=_NO_STORE)
        raise web.HTTPFound(link.url, headers=_NO_STORE)
