"""The Segment HTTP Tracking API's messages, turned into Kairos records.

Identifiers: Segment's `userId` is the customer's own id, as CleverTap's `identity` is,
so it becomes `identity:<userId>`; `anonymousId` becomes `anonymousId:<id>`. A message
carrying both ties them (kairos.identity_graph merges their users).

What each call becomes:
- `track` an event named `event` with `properties`;
- `page` / `screen` an event "Page Viewed" / "Screen Viewed" with `properties` plus
  `name` and `category` when given;
- `identify` a profile write of `traits` (`email`, `phone` and `name` become CleverTap's
  `Email`, `Phone` and `Name`, so lookups and merges by email work across both APIs);
- `group` a profile write of `groupId` and the group's traits as `group.<trait>`;
- `alias` a profile record tying `previousId` to `userId`.
The message's `context` is kept on the profile, flattened to `context.<path>` keys;
`context.traits` count as traits of an identify (RudderStack's libraries send them there).

Timestamps follow Segment: with `sentAt` the device clock's skew is removed,
`timestamp = receivedAt - (sentAt - originalTimestamp)`.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import msgspec

from kairos.identity import ANONYMOUS_ID, EMAIL_RE, PHONE_RE, user_key
from kairos.models import EventRecord, ProfileRecord, Record
from kairos.upload import MAX_IDENTIFIER_CHARS, MAX_INT, MAX_NESTING, MIN_INT, RESTRICTED_EVENTS

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_MESSAGE_ID_CHARS = 256
MAX_EVENT_NAME_CHARS = 256
CALLS = ("track", "identify", "alias", "page", "screen", "group")
PAGE_EVENT, SCREEN_EVENT = "Page Viewed", "Screen Viewed"
# Segment's reserved traits that have a CleverTap profile field of their own.
_TRAIT_FIELDS = {"email": ("Email", EMAIL_RE), "phone": ("Phone", PHONE_RE), "name": ("Name", None)}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_YEAR_10000_MS = 253_402_300_800_000


class MessageError(ValueError):
    """A message Kairos cannot take; the text names the field and what is wrong."""


class Message(msgspec.Struct, kw_only=True):
    """One Segment message. Fields are `Any` so a wrongly typed one gets a clear error
    naming it, not a decode failure."""

    type: Any = None
    messageId: Any = None
    userId: Any = None
    anonymousId: Any = None
    previousId: Any = None
    groupId: Any = None
    event: Any = None
    name: Any = None
    category: Any = None
    properties: Any = None
    traits: Any = None
    context: Any = None
    timestamp: Any = None
    originalTimestamp: Any = None
    sentAt: Any = None
    writeKey: Any = None


class Batch(msgspec.Struct, kw_only=True):
    """`POST /v1/batch`; messages stay raw so each one's size can be checked."""

    batch: list[msgspec.Raw]
    sentAt: Any = None
    context: Any = None
    writeKey: Any = None


message_decoder = msgspec.json.Decoder(Message)
batch_decoder = msgspec.json.Decoder(Batch)


def parse_time(value: Any, field: str) -> int | None:
    """An ISO-8601 time (Segment's format) as epoch milliseconds; None when absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise MessageError(f"{field} must be an ISO-8601 time string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MessageError(f"{field} must be an ISO-8601 time, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        ms = (parsed - _EPOCH) // timedelta(milliseconds=1)  # exact, unlike float seconds
    except OverflowError:
        ms = -1
    if not 0 <= ms < _YEAR_10000_MS:
        raise MessageError(f"{field} must be between 1970 and 9999, got {value!r}")
    return ms


def event_time_ms(message: Message, batch_sent_at: Any, received_ms: int) -> int:
    """When it happened, on the server's clock: Segment's skew correction when the
    message says when it was sent, else its own timestamp, else when it arrived."""
    happened = parse_time(message.originalTimestamp, "originalTimestamp")
    if happened is None:
        happened = parse_time(message.timestamp, "timestamp")
    sent = parse_time(message.sentAt if message.sentAt is not None else batch_sent_at, "sentAt")
    if happened is None:
        return received_ms
    if sent is None:
        return happened
    corrected = received_ms - (sent - happened)
    if corrected < 0:
        raise MessageError("sentAt is so far after the message's timestamp that the corrected time is before 1970")
    return corrected


def identifier(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MessageError(f"{field} must be a string")
    text = str(value)
    if len(text) > MAX_IDENTIFIER_CHARS:
        raise MessageError(f"{field} must be at most {MAX_IDENTIFIER_CHARS} characters")
    return text


def _object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MessageError(f"{field} must be an object")
    _check_values(value, field)
    return value


def _check_values(value: dict[str, Any], field: str) -> None:
    """Nesting within MAX_NESTING and integers within what the log's msgpack holds.
    Walked with a stack, not recursion: the JSON parser accepts far deeper nesting
    than Python's stack would."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            raise MessageError(f"{field} nests deeper than {MAX_NESTING} levels")
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif isinstance(child, int) and not isinstance(child, bool) and not MIN_INT <= child <= MAX_INT:
                raise MessageError(f"{field} holds the integer {child}, outside [-2^63, 2^64-1]")


def flatten(prefix: str, value: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """Nested objects as dotted keys (`context.os.name`), so each leaf is a column the
    segment engine can filter on; lists stay values."""
    for key, item in value.items():
        path = f"{prefix}.{key}"
        if isinstance(item, dict):
            flatten(path, item, out)
        else:
            out[path] = item
    return out


def _traits(traits: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key, value in traits.items():
        field = _TRAIT_FIELDS.get(key)
        if field is not None and isinstance(value, str) and (field[1] is None or field[1].fullmatch(value)):
            props[field[0]] = value
        else:
            props[key] = value
    return props


def to_records(
    messages: list[tuple[str, Message]],
    batch_sent_at: Any = None,
    batch_context: Any = None,
    previous_kind: Callable[[str], str] = lambda _: ANONYMOUS_ID,
    clock: Callable[[], float] = time.time,
    rejected: list[tuple[int, str]] | None = None,
    positions: list[int] | None = None,
) -> list[Record]:
    """Records for `(call, message)` pairs, in order. A bad message raises
    `MessageError` naming it by its position (`positions[i]`, if given) - or, when a
    `rejected` list is given, is skipped and listed there. `previous_kind` tells which
    identifier kind an alias's `previousId` is (a known user id, or else an anonymous id)."""
    received_ms = int(clock() * 1000)
    shared_context = _object(batch_context, "context")
    records: list[Record] = []
    # Each message's context is kept as a profile write right after it; of several for
    # one user in a request only the last is written, as it would win anyway.
    last_context: dict[str, int] = {}  # user -> position in `records` of its last context write
    context_of: dict[int, str] = {}  # position of each context write -> its user
    for index, (call, message) in enumerate(messages):
        position = positions[index] if positions is not None else index
        try:
            context = {**shared_context, **_object(message.context, "context")}
            # RudderStack sends identify traits in context.traits; Segment allows it too.
            context_traits = _object(context.pop("traits", None), "context.traits")
            if call == "identify" and context_traits:
                message.traits = {**context_traits, **_object(message.traits, "traits")}
            record = _to_record(call, message, batch_sent_at, received_ms, previous_kind)
        except MessageError as exc:
            if rejected is None:
                raise MessageError(f"message {position} ({call}): {exc}") from None
            rejected.append((position, f"message {position} ({call}): {exc}"))
            continue
        records.append(record)
        if context:
            flat = flatten("context", context, {})
            if isinstance(record, ProfileRecord) and call == "identify":
                record.props.update({k: v for k, v in flat.items() if k not in record.props})
            else:
                last_context[record.user] = len(records)
                context_of[len(records)] = record.user
                records.append(ProfileRecord(record.user, record.ts_ms, flat))
    return [r for i, r in enumerate(records) if i not in context_of or last_context[context_of[i]] == i]


def _to_record(call: str, message: Message, batch_sent_at: Any, received_ms: int,
               previous_kind: Callable[[str], str]) -> Record:
    if message.type is not None and message.type != call:
        raise MessageError(f"type is {message.type!r} but the call is {call!r}")
    user_id = identifier(message.userId, "userId")
    anonymous_id = identifier(message.anonymousId, "anonymousId")
    message_id = message.messageId
    if message_id is not None and (not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID_CHARS):
        raise MessageError(f"messageId must be a string of 1-{MAX_MESSAGE_ID_CHARS} characters")
    ts_ms = event_time_ms(message, batch_sent_at, received_ms)
    if call == "alias":
        previous = identifier(message.previousId, "previousId")
        if user_id is None or previous is None:
            raise MessageError("alias needs both userId and previousId")
        return ProfileRecord(user_key("identity", user_id), ts_ms, {}, {previous_kind(previous): previous}, message_id)
    if user_id is None and anonymous_id is None:
        raise MessageError("userId or anonymousId is required")
    primary = user_key("identity", user_id) if user_id is not None else user_key(ANONYMOUS_ID, anonymous_id)  # type: ignore[arg-type]
    aliases = {ANONYMOUS_ID: anonymous_id} if user_id is not None and anonymous_id is not None else None
    if call == "track":
        name = message.event
        if not isinstance(name, str) or not name:
            raise MessageError("event is required and must be a non-empty string")
        if len(name) > MAX_EVENT_NAME_CHARS:
            raise MessageError(f"event must be at most {MAX_EVENT_NAME_CHARS} characters")
        if name in RESTRICTED_EVENTS:
            raise MessageError(f"{name!r} is a restricted system event")
        return EventRecord(primary, ts_ms, name, _object(message.properties, "properties"), message_id, aliases)
    if call in ("page", "screen"):
        props = dict(_object(message.properties, "properties"))
        for field in ("name", "category"):
            value = getattr(message, field)
            if value is not None:
                if not isinstance(value, str):
                    raise MessageError(f"{field} must be a string")
                props.setdefault(field, value)
        return EventRecord(primary, ts_ms, PAGE_EVENT if call == "page" else SCREEN_EVENT, props, message_id, aliases)
    if call == "identify":
        return ProfileRecord(primary, ts_ms, _traits(_object(message.traits, "traits")), aliases, message_id)
    if call == "group":
        group_id = identifier(message.groupId, "groupId")
        if group_id is None:
            raise MessageError("groupId is required")
        props = flatten("group", _object(message.traits, "traits"), {"groupId": group_id})
        return ProfileRecord(primary, ts_ms, props, aliases, message_id)
    raise MessageError(f"type must be one of {', '.join(CALLS)}, got {call!r}")
