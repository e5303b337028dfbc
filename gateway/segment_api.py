"""Segment-compatible HTTP Tracking API: `/v1/{track,identify,alias,page,screen,group,batch}`.

Authentication is the account's write key, in the body (`writeKey`) or as HTTP Basic
user name with an empty password, as Segment's and RudderStack's libraries send it.
Errors use Segment's shape, `{"code": ..., "message": ...}`, which those libraries read.
A batch keeps its good messages when some are bad: the libraries drop a batch answered
4xx rather than retry it, so refusing it whole would lose the good ones. The bad ones
are named in the answer (`rejected`) and logged; a batch with no good message is 400.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import msgspec
from aiohttp import web

from gateway.admission import Admission
from gateway.backend import Backend
from gateway.body import read_body
from gateway.errors import ApiError, json_response
from kairos.accounts import Accounts
from kairos.identity import ANONYMOUS_ID, user_key
from kairos.models import encode_upload
from kairos.segment_messages import (
    CALLS, MAX_BATCH_BYTES, MAX_MESSAGE_BYTES, Message, MessageError, batch_decoder, identifier, message_decoder,
    to_records,
)

_SUCCESS = {"success": True}
logger = logging.getLogger(__name__)


class SegmentApi:
    def __init__(self, backend: Backend, accounts: Accounts, admission: Admission, max_body_bytes: int) -> None:
        self.backend = backend
        self.accounts = accounts
        self.admission = admission
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[web.RouteDef]:
        return [web.post(f"/v1/{call}", self._single(call)) for call in CALLS] + [web.post("/v1/batch", self.batch)]

    def _single(self, call: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            body = await read_body(request, MAX_MESSAGE_BYTES, 400, self.max_body_bytes)
            message = _decode(message_decoder, body, "message")
            account = await self._authenticate(request, message.writeKey)
            await self._ingest(account, [(call, message)], None, None)
            return json_response(_SUCCESS)

        return handle

    async def batch(self, request: web.Request) -> web.Response:
        body = await read_body(request, MAX_BATCH_BYTES, 400, self.max_body_bytes)
        batch = _decode(batch_decoder, body, "batch")
        account = await self._authenticate(request, batch.writeKey)
        if not batch.batch:
            raise ApiError(400, "batch must hold at least one message")
        messages: list[tuple[str, Message]] = []
        positions: list[int] = []
        rejected: list[tuple[int, str]] = []
        for position, raw in enumerate(batch.batch):
            try:
                messages.append(_batch_message(position, raw))
                positions.append(position)
            except ApiError as exc:
                rejected.append((position, exc.message))
        rejected = await self._ingest(account, messages, batch.sentAt, batch.context, rejected, positions)
        if not rejected:
            return json_response(_SUCCESS)
        rejected.sort()
        if len(rejected) == len(batch.batch):
            raise ApiError(400, f"no message in the batch could be taken; {rejected[0][1]}")
        logger.warning("account %s: %d of %d messages of a batch refused; first: %s",
                       account, len(rejected), len(batch.batch), rejected[0][1])
        return json_response({"success": True, "rejected": [{"index": i, "message": m} for i, m in rejected]})

    async def _authenticate(self, request: web.Request, body_key: Any) -> str:
        write_key = _basic_user(request.headers.get("Authorization", ""))
        if write_key is None and isinstance(body_key, str):
            write_key = body_key
        if not write_key:
            raise ApiError(401, "a write key is required: HTTP Basic user name, or writeKey in the body")
        account = await self.accounts.account_for_write_key(write_key)
        if account is None:
            raise ApiError(401, "invalid write key")
        return account

    async def _ingest(
        self, account: str, messages: list[tuple[str, Message]], sent_at: Any, context: Any,
        rejected: list[tuple[int, str]] | None = None, positions: list[int] | None = None,
    ) -> list[tuple[int, str]]:
        """Store the messages; a bad one is a 400, or - given a `rejected` list - is
        skipped and added to it. Returns that list."""
        with self.admission.admit(account):
            kinds = await self._previous_id_kinds(account, messages)
            try:
                records = to_records(messages, sent_at, context, lambda previous: kinds.get(previous, ANONYMOUS_ID),
                                     rejected=rejected, positions=positions)
            except MessageError as exc:
                raise ApiError(400, str(exc)) from None
            if records:
                await self.backend.ingest(account, encode_upload(records))
        return rejected or []

    async def _previous_id_kinds(self, account: str, messages: list[tuple[str, Message]]) -> dict[str, str]:
        """An alias's previousId is a user id if the graph knows it as one, or an earlier
        message of the same request used it as a userId; else an anonymous id."""
        kinds: dict[str, str] = {}
        user_ids: set[str] = set()
        for call, message in messages:
            try:
                previous = identifier(message.previousId, "previousId") if call == "alias" else None
                user_id = identifier(message.userId, "userId")
            except MessageError:
                continue  # to_records names the bad field
            if previous is not None and previous not in kinds:
                known = previous in user_ids or await self.backend.user_of(account, user_key("identity", previous))
                kinds[previous] = "identity" if known else ANONYMOUS_ID
            if user_id is not None:
                user_ids.add(user_id)
        return kinds


def _batch_message(position: int, raw: msgspec.Raw) -> tuple[str, Message]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ApiError(400, f"message {position} is {len(raw)} bytes; at most {MAX_MESSAGE_BYTES} are allowed")
    message = _decode(message_decoder, bytes(raw), f"message {position}")
    if message.type not in CALLS:
        raise ApiError(400, f"message {position}: type must be one of {', '.join(CALLS)}, got {message.type!r}")
    return message.type, message


def _basic_user(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:  # bad base64 (binascii.Error), non-ASCII text, undecodable bytes
        raise ApiError(401, "Authorization header is not valid HTTP Basic") from None
    return decoded.partition(":")[0] or None


def _decode(decoder: msgspec.json.Decoder, body: bytes, what: str) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"{what} is not a valid Segment message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"{what} is malformed JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, f"{what} is nested too deeply") from None
    except UnicodeDecodeError:
        raise ApiError(400, f"{what} is not valid UTF-8") from None
