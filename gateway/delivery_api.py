"""Delivery through the gateway: an account's delivery settings (`/api/settings/delivery`),
its delivery counters and dead letters (`/api/deliveries/...`), and the users' in-app
inbox for apps and their backends (`/1/inbox`: list, mark read, and a server-sent-events
stream of new messages while the app is open).

Same credentials and error shape as the rest of the API.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from gateway.api_requests import bad_definition, json_object, only_fields, query_int
from gateway.auth import ACCOUNT
from gateway.backend import Backend
from gateway.errors import ApiError, json_response
from kairos import keys
from kairos.channels.in_app import Inbox
from kairos.identity import user_key
from kairos.routing.settings import MAX_SETTINGS_BYTES, masked, parse_delivery_settings, unmasked
from kairos.segments.definition import SegmentError

MAX_DEAD_LETTERS = 1000
MAX_READ_IDS = 100
# An idle event stream sends a comment this often, so proxies keep it open and a gone
# client is noticed.
SSE_HEARTBEAT_S = 15.0


class DeliveryApi:
    def __init__(self, backend: Backend, client: aioredis.Redis, inbox: Inbox, max_streams: int) -> None:
        self.backend = backend
        self.redis = client
        self.inbox = inbox
        self.max_streams = max_streams
        self.open_streams = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/settings/delivery", self.get_settings),
            web.put("/api/settings/delivery", self.put_settings),
            web.get("/api/deliveries/stats", self.stats),
            web.get("/api/deliveries/dead-letters", self.dead_letters),
            web.get("/1/inbox", self.list_inbox),
            web.post("/1/inbox/read", self.mark_read),
            web.get("/1/inbox/stream", self.stream_inbox),
        ]

    # --- settings, counters, dead letters -----------------------------------------------

    async def _stored_settings(self, account: str) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.delivery_settings(account))
        return msgspec.json.decode(raw) if raw is not None else None

    async def get_settings(self, request: web.Request) -> web.Response:
        return json_response({"settings": masked(await self._stored_settings(request[ACCOUNT]) or {})})

    async def put_settings(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        body = await json_object(request)
        only_fields(body, {"settings"})
        if not isinstance(body.get("settings"), dict):
            raise ApiError(400, "send {\"settings\": {...}}", path="settings")
        try:
            settings = unmasked(body["settings"], await self._stored_settings(account))
            parse_delivery_settings(settings, "settings")
        except SegmentError as exc:
            raise bad_definition(exc) from None
        encoded = msgspec.json.encode(settings)
        if len(encoded) > MAX_SETTINGS_BYTES:
            raise ApiError(400, f"settings are larger than {MAX_SETTINGS_BYTES} bytes", path="settings")
        await self.redis.set(keys.delivery_settings(account), encoded)
        return json_response({"settings": masked(settings)})

    async def stats(self, request: web.Request) -> web.Response:
        raw = await self.redis.hgetall(keys.delivery_stats(request[ACCOUNT]))
        channels: dict[str, dict[str, int]] = {}
        sources: dict[str, dict[str, int]] = {}
        other: dict[str, int] = {}
        for field, value in raw.items():
            name, _, outcome = field.decode().rpartition("|")
            if not name:
                other[outcome] = int(value)
            elif ":" in name:
                sources.setdefault(name, {})[outcome] = int(value)
            else:
                channels.setdefault(name, {})[outcome] = int(value)
        return json_response({"channels": channels, "sources": sources, **other})

    async def dead_letters(self, request: web.Request) -> web.Response:
        limit = query_int(request, "limit", 100, MAX_DEAD_LETTERS)
        found = await self.redis.xrevrange(keys.dead_letters(request[ACCOUNT]), count=limit)
        return json_response({"dead_letters": [msgspec.json.decode(fields[b"d"]) for _, fields in found]})

    # --- the in-app inbox ------------------------------------------------------------------

    async def _user(self, account: str, identity: Any) -> str:
        if not isinstance(identity, str) or not 0 < len(identity) <= 1024:
            raise ApiError(400, "'identity' must be the user's identity (1-1024 characters)", path="identity")
        user = await self.backend.user_of(account, user_key("identity", identity))
        if user is None:
            raise ApiError(404, f"no user with identity {identity[:60]!r}", path="identity")
        return user

    async def list_inbox(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        user = await self._user(account, request.query.get("identity"))
        unread = request.query.get("unread", "") in ("1", "true")
        items = await self.inbox.list(account, user, unread_only=unread)
        return json_response({"status": "success", "messages": [msgspec.to_builtins(m) for m in items],
                              "unread": sum(1 for m in items if not m.read)})

    async def mark_read(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        body = await json_object(request)
        only_fields(body, {"identity", "ids"})
        user = await self._user(account, body.get("identity"))
        ids = body.get("ids")
        if not isinstance(ids, list) or not 0 < len(ids) <= MAX_READ_IDS or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, f"'ids' must be a list of 1-{MAX_READ_IDS} message ids", path="ids")
        return json_response({"status": "success", "marked": await self.inbox.mark_read(account, user, ids)})

    async def stream_inbox(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one `message` event per new in-app message, as it arrives."""
        account = request[ACCOUNT]
        user = await self._user(account, request.query.get("identity"))
        if self.open_streams >= self.max_streams:
            raise ApiError(503, f"this gateway serves {self.max_streams} inbox streams at most; retry later")
        self.open_streams += 1
        try:
            return await self._stream(request, account, user)
        finally:
            self.open_streams -= 1

    async def _stream(self, request: web.Request, account: str, user: str) -> web.StreamResponse:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(keys.inbox_live(account, user))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await response.write(b": connected\n\n")
            quiet_since = time.monotonic()
            # Polled each second, so a gone app frees its place (and Redis connection) at once.
            while request.transport is not None and not request.transport.is_closing():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    await response.write(b"event: message\ndata: " + message["data"] + b"\n\n")
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= SSE_HEARTBEAT_S:
                    await response.write(b": heartbeat\n\n")
                    quiet_since = time.monotonic()
        except ConnectionResetError:
            pass  # the app went away; nothing to answer
        finally:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe()
            await pubsub.aclose()
        return response

