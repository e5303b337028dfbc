"""The Kairos API under `/api/`: saved segments, segment queries and analytics (trends,
funnels, retention, RFM).

Same credentials as CleverTap's API (account id and passcode headers). Errors are
`{"status": "fail", "code": C, "error": "...", "path": "..."}`, where `path` locates
the offending part of the request body (for instance `segment.all[2].within`).
Documented in `gateway/openapi.yaml`, served at `/api/openapi.json`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from typing import Any

import msgspec
from aiohttp import web

from gateway.admission import Admission
from gateway.auth import ACCOUNT
from gateway.api_requests import bad_definition, checked, json_object, only_fields, query_int
from gateway.errors import ApiError, json_response
from kairos.journeys.catalog import JourneyCatalog
from kairos.query_coordinator import QueryCoordinator
from kairos.segments.catalog import SegmentCatalog, check_name
from kairos.segments.signals import SignalLog
from kairos.segments.definition import SegmentError, parse_instant, parse_segment
from kairos.segments.timing import zone

MAX_QUERIES_IN_FLIGHT = 8
MAX_QUERIES_PER_ACCOUNT = 4
_STREAM_ID = re.compile(r"[0-9]{1,19}-[0-9]{1,19}", re.ASCII)
MAX_MEMBERS_PAGE = 5000


class MembersCursor(msgspec.Struct, array_like=True):
    """Where the next page starts, the instant the query is evaluated at (so every page
    sees the same windows), and a digest of the query it belongs to."""

    partition: int
    start: int
    now_ms: int
    query: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(msgspec.msgpack.encode(self)).decode().rstrip("=")

    @classmethod
    def decode(cls, text: Any, query: str, partitions: int) -> "MembersCursor":
        try:
            raw = base64.urlsafe_b64decode(str(text) + "=" * (-len(str(text)) % 4))
            cursor = msgspec.msgpack.decode(raw, type=cls)
        except (binascii.Error, ValueError, msgspec.DecodeError):
            raise ApiError(400, "cursor is not valid", path="cursor") from None
        valid = 0 <= cursor.partition < partitions and cursor.start >= 0 and 0 <= cursor.now_ms < 253370764800000
        if cursor.query != query or not valid:
            raise ApiError(400, "cursor is not valid for this query (send the same segment, tz and limit)",
                           path="cursor")
        return cursor


class KairosApi:
    def __init__(self, coordinator: QueryCoordinator, catalog: SegmentCatalog, signals: SignalLog,
                 journeys: JourneyCatalog) -> None:
        self.coordinator = coordinator
        self.catalog = catalog
        self.signals = signals
        self.journeys = journeys
        # Queries scan the shards, whose event loops also apply uploads: a bound on the
        # queries in flight keeps a burst of them from stalling ingest.
        self.admission = Admission(MAX_QUERIES_IN_FLIGHT, MAX_QUERIES_PER_ACCOUNT)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/segments", self.list_segments),
            web.put("/api/segments/{name}", self.save_segment),
            web.get("/api/segments/{name}", self.get_segment),
            web.delete("/api/segments/{name}", self.delete_segment),
            web.get("/api/segments/{name}/signals", self.segment_signals),
            web.post("/api/segments/count", self.count),
            web.post("/api/segments/members", self.members),
            web.post("/api/query/trends", self._analytics("trend", "buckets")),
            web.post("/api/query/funnel", self._analytics("funnel", "steps")),
            web.post("/api/query/retention", self._analytics("retention", None)),
            web.post("/api/query/rfm", self._analytics("rfm", None)),
        ]

    # --- saved segments ---------------------------------------------------------------

    async def list_segments(self, request: web.Request) -> web.Response:
        saved = await self.catalog.all(request[ACCOUNT])
        return json_response({"segments": saved})

    async def save_segment(self, request: web.Request) -> web.Response:
        name = checked(check_name, request.match_info["name"])
        body = await json_object(request)
        unknown = sorted(set(body) - {"definition", "live", "description"})
        if unknown:
            raise ApiError(400, f"{unknown[0]!r} is not a field of a saved segment", path=unknown[0])
        if "definition" not in body:
            raise ApiError(400, "a saved segment needs 'definition'", path="definition")
        live, description = body.get("live", False), body.get("description", "")
        if not isinstance(live, bool):
            raise ApiError(400, "'live' must be true or false", path="live")
        if not isinstance(description, str):
            raise ApiError(400, "'description' must be a string", path="description")
        if not live:
            await self._refuse_if_used(request[ACCOUNT], name, "made not live", signals_only=True)
        try:
            saved = await self.catalog.save(request[ACCOUNT], name, body["definition"], live, description)
        except SegmentError as exc:
            raise bad_definition(exc, "definition") from None
        # Every shard takes up the account's live segments before the answer, so that
        # records acknowledged from now on are evaluated against this version.
        await self.coordinator.refresh_live(request[ACCOUNT])
        return json_response(saved)

    async def get_segment(self, request: web.Request) -> web.Response:
        saved = await self.catalog.get(request[ACCOUNT], request.match_info["name"])
        if saved is None:
            raise ApiError(404, f"no saved segment named {request.match_info['name']!r}")
        return json_response(saved)

    async def _refuse_if_used(self, account: str, name: str, change: str, signals_only: bool) -> None:
        """409 when journeys enter on the segment: they would stop getting its signals."""
        journeys = await self.journeys.journeys_entering_on(account, name, signals_only)
        if journeys:
            raise ApiError(409, f"segment {name!r} cannot be {change}: journey {journeys[0]!r} enters on it"
                                f"{f' (and {len(journeys) - 1} more)' if len(journeys) > 1 else ''}; change or"
                                " delete the journey first")

    async def delete_segment(self, request: web.Request) -> web.Response:
        await self._refuse_if_used(request[ACCOUNT], request.match_info["name"], "deleted", signals_only=False)
        if not await self.catalog.delete(request[ACCOUNT], request.match_info["name"]):
            raise ApiError(404, f"no saved segment named {request.match_info['name']!r}")
        await self.coordinator.refresh_live(request[ACCOUNT])
        return json_response({"status": "success"})

    async def segment_signals(self, request: web.Request) -> web.Response:
        """A live segment's entries and exits, oldest first, after the signal id `after`."""
        account, name = request[ACCOUNT], request.match_info["name"]
        saved = await self.catalog.get(account, name)
        if saved is None:
            raise ApiError(404, f"no saved segment named {name!r}")
        after = request.query.get("after", "0-0")
        if not _STREAM_ID.fullmatch(after) or any(int(part) >= 2**63 for part in after.split("-")):
            raise ApiError(400, "'after' must be a signal id such as 1790000000000-0", path="after")
        limit = query_int(request, "limit", 100, MAX_MEMBERS_PAGE)
        page = await self.signals.read(account, name, after, limit)
        return json_response({"signals": page, "next": page[-1]["id"] if page else after, "live": saved.live})

    # --- queries ------------------------------------------------------------------------

    async def count(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        body = await json_object(request)
        only_fields(body, {"segment", "name", "tz", "as_of"})
        definition = await self._definition(account, body)
        tz, now_ms = _tz(body), _as_of(body)
        with self.admission.admit(account):
            total = await self.coordinator.segment_count(account, definition, now_ms, tz)
        return json_response({"count": total, "as_of": now_ms})

    async def members(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        body = await json_object(request)
        only_fields(body, {"segment", "name", "tz", "as_of", "limit", "cursor"})
        definition = await self._definition(account, body)
        tz = _tz(body)
        limit = body.get("limit", 100)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_MEMBERS_PAGE:
            raise ApiError(400, f"'limit' must be an integer from 1 to {MAX_MEMBERS_PAGE}", path="limit")
        digest = hashlib.sha256(msgspec.json.encode([definition, tz, limit])).hexdigest()[:16]
        if "cursor" in body:
            cursor = MembersCursor.decode(body["cursor"], digest, self.coordinator.partition_map.partitions)
            partition, start, now_ms = cursor.partition, cursor.start, cursor.now_ms
        else:
            partition, start, now_ms = 0, 0, _as_of(body)
        with self.admission.admit(account):
            page, following = await self.coordinator.segment_members(
                account, definition, now_ms, tz, partition, start, limit)
        next_cursor = MembersCursor(*following, now_ms, digest).encode() if following else None
        return json_response({"members": page, "next_cursor": next_cursor, "as_of": now_ms})

    def _analytics(self, kind: str, field: str | None) -> Any:
        async def handle(request: web.Request) -> web.Response:
            body = await json_object(request)
            tz, now_ms = _tz(body), _as_of(body)
            query = {k: v for k, v in body.items() if k not in ("tz", "as_of")}
            try:
                with self.admission.admit(request[ACCOUNT]):
                    answer = await self.coordinator.analytics(kind, request[ACCOUNT], query, now_ms, tz)
            except SegmentError as exc:
                raise bad_definition(exc) from None
            payload = {field: answer} if field else dict(answer)
            return json_response({**payload, "as_of": now_ms, "tz": tz})

        return handle

    async def _definition(self, account: str, body: dict[str, Any]) -> Any:
        """The segment of a query: inline under 'segment', or saved under 'name'."""
        if ("segment" in body) == ("name" in body):
            raise ApiError(400, "give either 'segment' (a definition) or 'name' (a saved segment)", path="segment")
        if "name" in body:
            name = body["name"]
            if not isinstance(name, str):
                raise ApiError(400, "'name' must be the name of a saved segment", path="name")
            saved = await self.catalog.get(account, name)
            if saved is None:
                raise ApiError(404, f"no saved segment named {name!r}", path="name")
            return saved.definition
        try:
            parse_segment(body["segment"])
        except SegmentError as exc:
            raise bad_definition(exc) from None
        return body["segment"]


def _tz(body: dict[str, Any]) -> str:
    name = body.get("tz", "UTC")
    if not isinstance(name, str):
        raise ApiError(400, "'tz' must be an IANA time zone name", path="tz")
    checked(lambda n: zone(n, "tz"), name)
    return name


def _as_of(body: dict[str, Any]) -> int:
    """The instant relative windows ('7d') count back from: now, unless the query fixes it
    (an ISO-8601 datetime with offset, or epoch seconds) to make an answer reproducible."""
    raw = body.get("as_of")
    if raw is None:
        return int(time.time() * 1000)
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0 <= raw < 253370764800:  # 9999-01-01
        return int(raw * 1000)
    if isinstance(raw, str):
        return checked(lambda text: parse_instant(text, "as_of"), raw)
    raise ApiError(400, "'as_of' must be an ISO-8601 datetime with offset or epoch seconds", path="as_of")
