"""CleverTap-compatible endpoints: upload, profile read, event and profile downloads
with cursors, and counts."""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import msgspec
from aiohttp import web

from gateway.admission import Admission
from gateway.auth import ACCOUNT
from gateway.backend import Backend
from gateway.body import json_decode_errors, read_body
from gateway.errors import ApiError, json_response
from kairos.identity import ANONYMOUS_ID, IDENTIFIER_KINDS, identifying_key, user_key
from kairos.models import LooseUploadBody, UploadBody, UploadResponse, encode_upload
from kairos.query_coordinator import QueryCoordinator
from kairos.segments.clevertap_query import event_filters, profile_condition
from kairos.segments.definition import SegmentError, parse_segment, parse_where
from kairos.segments.downloads import ExportQuery
from kairos.timefmt import DateError, day_range_ms
from kairos.upload import MAX_RECORDS, validate_fast, validate_upload

_upload_decoder = msgspec.json.Decoder(UploadBody)
_loose_decoder = msgspec.json.Decoder(LooseUploadBody)
MAX_BATCH_SIZE = 5000
DEFAULT_BATCH_SIZE = 10


class QueryBody(msgspec.Struct):
    event_name: Any = None
    from_: Any = msgspec.field(default=None, name="from")
    to: Any = None
    common_profile_properties: Any = None
    event_properties: Any = None


class DemergeBody(msgspec.Struct):
    identities: Any = None


MAX_DEMERGE = 100
# Cursors go back in a GET's query string, which aiohttp caps at 8190 bytes a line.
MAX_CURSOR_CHARS = 6000
MAX_CURSOR_BYTES = 1 << 20
# CleverTap's lookups, and Kairos's: phone, and Segment's anonymousId.
LOOKUP_PARAMETERS = (*IDENTIFIER_KINDS, "email", "phone", ANONYMOUS_ID)


class ExportCursor(msgspec.Struct, array_like=True):
    account: str
    kind: str
    query: ExportQuery
    batch_size: int
    partition: int
    position: int

    def encode(self) -> str:
        # Compressed: the query's filters travel in it, and a cursor must fit in a URL.
        return base64.urlsafe_b64encode(zlib.compress(msgspec.msgpack.encode(self))).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, account: str, partitions: int) -> "ExportCursor":
        """A cursor is client-held, so everything in it is checked as input: the account
        (never page through another's data with a borrowed cursor) and every bound."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            cursor = msgspec.msgpack.decode(zlib.decompressobj().decompress(raw, MAX_CURSOR_BYTES), type=cls)
        except (binascii.Error, ValueError, msgspec.DecodeError, zlib.error):
            raise ApiError(400, "cursor is not valid") from None
        try:
            parse_where(cursor.query.where, "event_properties")
            if cursor.query.profile is not None:
                parse_segment(cursor.query.profile)
        except SegmentError:
            raise ApiError(400, "cursor is not valid") from None
        valid = (
            cursor.account == account
            and 1 <= cursor.batch_size <= MAX_BATCH_SIZE
            and 0 <= cursor.partition < partitions
            and cursor.position >= 0
        )
        if not valid:
            raise ApiError(400, "cursor is not valid")
        return cursor


class CleverTapApi:
    def __init__(self, backend: Backend, coordinator: QueryCoordinator, admission: Admission,
                 max_body_bytes: int) -> None:
        self.backend = backend
        self.coordinator = coordinator
        self.admission = admission
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/1/upload", self.upload),
            web.get("/1/profile.json", self.profile),
            web.post("/1/events.json", self.events_download),
            web.get("/1/events.json", self.events_download),
            web.post("/1/profiles.json", self.profiles_download),
            web.get("/1/profiles.json", self.profiles_download),
            web.post("/1/counts/events.json", self.count_events),
            web.post("/1/counts/profiles.json", self.count_profiles),
            web.post("/1/demerge/profiles.json", self.demerge),
        ]

    # --- upload -----------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        account: str = request[ACCOUNT]
        # Read before admission: a slow sender must not hold one of the account's slots.
        body = await read_body(request, self.max_body_bytes)
        with self.admission.admit(account):
            fast = validate_fast(body)
            if fast is not None:
                accepted, rejected = fast, []
            else:
                accepted, rejected = validate_upload(_decode_upload(body))
            dry_run = request.query.get("dryRun", "") in ("1", "true")
            if accepted and not dry_run:
                await self.backend.ingest(account, encode_upload(accepted))
        status = "success" if not rejected else ("partial" if accepted else "fail")
        return json_response(UploadResponse(status, len(accepted), rejected))

    # --- profile read -----------------------------------------------------------

    async def profile(self, request: web.Request) -> web.Response:
        account: str = request[ACCOUNT]
        query = request.query
        given = [k for k in LOOKUP_PARAMETERS if k in query]
        if len(given) != 1:
            raise ApiError(400, f"give exactly one of {', '.join(LOOKUP_PARAMETERS)}")
        kind = given[0]
        value = query[kind]
        if not value:
            raise ApiError(400, f"{kind} must not be empty")
        # Email and Phone are identifiers too (profiles carry them in profileData).
        if kind in ("email", "phone"):
            identifier = identifying_key(kind.capitalize(), value)
        else:
            identifier = user_key(kind, value)
        user = await self.backend.user_of(account, identifier)
        record = None
        if user is not None:
            shard = self.backend.partition_map.shard_of(self.backend.partition_map.partition_of(account, user))
            record = await self.backend.call_shard(shard, "get_profile", account, user)
        if record is None:
            raise ApiError(404, "Profile not found")
        return json_response({"status": "success", "record": record})

    # --- demerge ----------------------------------------------------------------

    async def demerge(self, request: web.Request) -> web.Response:
        """Split merged profiles back apart, named by a customer identity or an email."""
        account: str = request[ACCOUNT]
        try:
            body = msgspec.json.decode(await read_body(request, self.max_body_bytes), type=DemergeBody)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"body must be {{\"identities\": [...]}}: {exc}") from None
        identities = [body.identities] if isinstance(body.identities, str) else body.identities
        if not isinstance(identities, list) or not identities or not all(isinstance(i, str) and i for i in identities):
            raise ApiError(400, "identities must be a non-empty string or list of non-empty strings")
        if len(identities) > MAX_DEMERGE:
            raise ApiError(400, f"at most {MAX_DEMERGE} identities per request, got {len(identities)}")
        unprocessed: list[dict[str, str]] = []
        users: dict[str, list[str]] = {}
        for identity in identities:
            user = await self.backend.user_of(account, user_key("identity", identity))
            if user is None:
                user = await self.backend.user_of(account, identifying_key("Email", identity))
            if user is None:
                unprocessed.append({"identity": identity, "error": "no profile has this identity or email"})
            else:
                users.setdefault(user, []).append(identity)
        done = await self.backend.demerge(account, list(users)) if users else []
        for (user, named), split in zip(users.items(), done):
            if not split:
                unprocessed.extend({"identity": i, "error": "the profile is not a merge of others"} for i in named)
        processed = len(identities) - len(unprocessed)
        status = "success" if not unprocessed else ("partial" if processed else "fail")
        return json_response({"status": status, "processed": processed, "unprocessed": unprocessed})

    # --- downloads --------------------------------------------------------------

    async def events_download(self, request: web.Request) -> web.Response:
        return await self._download(request, "events")

    async def profiles_download(self, request: web.Request) -> web.Response:
        return await self._download(request, "profiles")

    async def _download(self, request: web.Request, kind: str) -> web.Response:
        account: str = request[ACCOUNT]
        if "cursor" in request.query:
            cursor = ExportCursor.decode(request.query["cursor"], account, self.backend.partition_map.partitions)
            if cursor.kind != kind:
                raise ApiError(400, f"cursor belongs to a {cursor.kind} download")
            return await self._page(cursor)
        if request.method != "POST":
            raise ApiError(400, "start a download with POST and a query body, then GET with its cursor")
        query = await _parse_query(request, self.max_body_bytes)
        batch_size = _batch_size(request.query.get("batch_size"))
        encoded = ExportCursor(account, kind, query, batch_size, 0, 0).encode()
        if len(encoded) > MAX_CURSOR_CHARS:
            raise ApiError(400, f"the query's filters are too large for a download cursor (over {MAX_CURSOR_CHARS}"
                                " characters once encoded): use fewer or shorter values")
        return json_response({"status": "success", "cursor": encoded})

    async def _page(self, cursor: ExportCursor) -> web.Response:
        method = "export_events" if cursor.kind == "events" else "export_profiles"
        records, following = await self.coordinator.pages(
            method, (cursor.account, cursor.query), cursor.partition, cursor.position, cursor.batch_size)
        payload: dict[str, Any] = {"status": "success", "records": records}
        if following is not None:
            partition, position = following
            payload["next_cursor"] = msgspec.structs.replace(cursor, partition=partition, position=position).encode()
        return json_response(payload)

    # --- counts -----------------------------------------------------------------

    async def count_events(self, request: web.Request) -> web.Response:
        query = await _parse_query(request, self.max_body_bytes)
        parts = await self.coordinator.scatter("count_events", request[ACCOUNT], query)
        return json_response({"status": "success", "count": sum(parts)})

    async def count_profiles(self, request: web.Request) -> web.Response:
        query = await _parse_query(request, self.max_body_bytes)
        parts = await self.coordinator.scatter("count_profiles", request[ACCOUNT], query)
        return json_response({"status": "success", "count": sum(parts)})


def _decode_upload(body: bytes) -> list[Any]:
    with json_decode_errors():
        try:
            records: list[Any] = _upload_decoder.decode(body).d
        except msgspec.ValidationError:
            # Some element of `d` is not an object: decode loosely so each gets its own error.
            try:
                records = _loose_decoder.decode(body).d
            except msgspec.ValidationError as exc:
                raise ApiError(400, f"request body must be an object with a list 'd' of records: {exc}") from None
    if not records:
        raise ApiError(400, "'d' must hold at least one record")
    if len(records) > MAX_RECORDS:
        raise ApiError(400, f"'d' holds {len(records)} records; at most {MAX_RECORDS} are allowed per request")
    return records


async def _parse_query(request: web.Request, limit: int) -> ExportQuery:
    """CleverTap's query body, its property filters translated for the segment engine."""
    try:
        body = msgspec.json.decode(await read_body(request, limit), type=QueryBody)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"query body must be a JSON object: {exc}") from None
    except RecursionError:
        raise ApiError(400, "query body is nested too deeply") from None
    except UnicodeDecodeError:
        raise ApiError(400, "query body is not valid UTF-8") from None
    if not isinstance(body.event_name, str) or not body.event_name:
        raise ApiError(400, "event_name is required")
    try:
        from_ms, to_ms = day_range_ms(body.from_, body.to)
    except DateError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        where = event_filters(body.event_properties)
        profile = profile_condition(body.common_profile_properties)
    except SegmentError as exc:
        raise ApiError(400, str(exc)) from None
    return ExportQuery(body.event_name, from_ms, to_ms, where, profile)


def _batch_size(text: str | None) -> int:
    if text is None:
        return DEFAULT_BATCH_SIZE
    if not (text.isascii() and text.isdigit() and len(text) <= 4) or not 1 <= int(text) <= MAX_BATCH_SIZE:
        raise ApiError(400, f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE}")
    return int(text)
