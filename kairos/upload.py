"""Validation of CleverTap upload records, with CleverTap's per-record error codes.

`validate_upload` turns decoded `UploadRecord`s into normalized records and the list
of rejected ones. It runs on the gateway's hot path for every record, so it is a
straight sequence of cheap checks.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Callable, ClassVar

import msgspec

from kairos.identity import EMAIL_RE, IDENTIFIER_KINDS, PHONE_RE, user_key
from kairos.models import EventRecord, ProfileRecord, Record, UnprocessedRecord, UploadRecord

MAX_RECORDS = 1000
MAX_KEY_CHARS = 120
MAX_VALUE_BYTES = 512
MAX_PROPERTIES = 256
MAX_IDENTIFIER_CHARS = 1024
# Lists and objects in a property may nest this deep. Far deeper values crash C code
# that walks them recursively (pickle, msgpack on a small stack), so they are refused.
MAX_NESTING = 16
# Epoch seconds beyond this are almost surely milliseconds (year 5138).
MAX_EPOCH_SECONDS = 99_999_999_999
# msgpack, the log's format, holds integers in this range only.
MIN_INT, MAX_INT = -(2**63), 2**64 - 1

# Events only Kairos itself may raise (delivery feedback, lifecycle), as in CleverTap.
RESTRICTED_EVENTS = frozenset({
    "App Launched", "App Installed", "App Uninstalled", "Notification Sent",
    "Notification Delivered", "Notification Viewed", "Notification Clicked",
    "Notification Failed", "UTM Visited", "Stayed", "Session Concluded",
})


# Profile fields CleverTap checks, with the code it answers when the value is wrong.
GENDERS = frozenset({"M", "F", "O", "U"})
YES_NO = frozenset({"Y", "N"})
EDUCATION = frozenset({"School", "College", "Graduate"})


_ENUM_FIELDS = (
    ("Gender", GENDERS, 514, "one of M, F, O, U"),
    ("Employed", YES_NO, 517, "Y or N"),
    ("Education", EDUCATION, 518, "School, College or Graduate"),
    ("Married", YES_NO, 519, "Y or N"),
)


class RecordError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_properties(props: Any, what: str) -> dict[str, Any]:
    if not isinstance(props, dict):
        raise RecordError(512, f"{what} must be a JSON object")
    if len(props) > MAX_PROPERTIES:
        raise RecordError(522, f"{what} has {len(props)} properties; at most {MAX_PROPERTIES} are allowed")
    for key, value in props.items():
        if len(key) > MAX_KEY_CHARS or not key:
            raise RecordError(512, f"{what} key {key[:40]!r}... must be 1-{MAX_KEY_CHARS} characters")
        if isinstance(value, str):
            if len(value) > MAX_VALUE_BYTES // 4 and len(value.encode()) > MAX_VALUE_BYTES:
                raise RecordError(512, f"{what}.{key} is longer than {MAX_VALUE_BYTES} bytes")
        elif isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
            raise RecordError(512, f"{what}.{key} is an integer outside [-2^63, 2^64-1]")
        elif isinstance(value, (dict, list)):
            if _depth(value) > MAX_NESTING:
                raise RecordError(512, f"{what}.{key} is nested deeper than {MAX_NESTING} levels")
            if len(msgspec.json.encode(value)) > MAX_VALUE_BYTES * 4:
                raise RecordError(512, f"{what}.{key} is larger than {MAX_VALUE_BYTES * 4} bytes")
            try:
                msgspec.msgpack.encode(value)
            except OverflowError:
                raise RecordError(512, f"{what}.{key} holds an integer outside [-2^63, 2^64-1]") from None
    return props


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (the value may be hostile)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_NESTING:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_profile_fields(props: dict[str, Any]) -> None:
    if "Email" in props:
        email = props["Email"]
        if not isinstance(email, str) or not EMAIL_RE.fullmatch(email):
            raise RecordError(515, f"Email {email!r} is not a valid email address")
    if "Phone" in props:
        phone = props["Phone"]
        if not isinstance(phone, str) or not PHONE_RE.fullmatch(phone):
            raise RecordError(516, f"Phone {phone!r} must start with + and the country code, digits only")
    for field, allowed, code, wording in _ENUM_FIELDS:
        if field in props:
            value = props[field]
            # A list or object is unhashable: test the type before the set.
            if not isinstance(value, str) or value not in allowed:
                raise RecordError(code, f"{field} {value!r} must be {wording}")
    if "Age" in props:
        age = props["Age"]
        if isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= 150:
            raise RecordError(520, f"Age {age!r} must be a whole number from 0 to 150")


def _identifier(value: Any, kind: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError(526 if kind == "objectId" else 523, f"{kind} must be a string or a number")
    if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
        raise RecordError(526 if kind == "objectId" else 523, f"{kind} is a number outside [-2^63, 2^64-1]")
    text = str(value)
    if not text or len(text) > MAX_IDENTIFIER_CHARS:
        raise RecordError(526 if kind == "objectId" else 523, f"{kind} must be 1-{MAX_IDENTIFIER_CHARS} characters")
    return text


def _timestamp_ms(ts: Any, now_ms: int) -> int:
    if ts is None:
        return now_ms
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 <= ts <= MAX_EPOCH_SECONDS:
        raise RecordError(525, f"ts {ts!r} is not a timestamp in epoch seconds")
    return int(ts * 1000)


def normalize(record: Any, now_ms: int, props_checked: bool = False) -> Record:
    """One upload record -> a normalized record, or `RecordError` with CleverTap's code.

    `props_checked` means the typed fast-path decode has already enforced the key,
    value and count limits on evtData / profileData.
    """
    kind = record.type
    if kind != "event" and kind != "profile":
        raise RecordError(524, "type must be 'event' or 'profile'")
    ids: dict[str, str] = {}
    for id_kind in IDENTIFIER_KINDS:
        value = _identifier(getattr(record, id_kind), id_kind)
        if value is not None:
            ids[id_kind] = value
    if not ids:
        raise RecordError(523, "record has no identity, objectId, FBID or GPID")
    first_kind = next(iter(ids))
    user = user_key(first_kind, ids.pop(first_kind))
    ts_ms = _timestamp_ms(record.ts, now_ms)
    message_id = record.messageId
    if message_id is not None and (not isinstance(message_id, str) or not 0 < len(message_id) <= 256):
        raise RecordError(512, "messageId must be a string of 1-256 characters")
    if kind == "event":
        name = record.evtName
        if name is None or name == "":
            raise RecordError(509, "evtName is mandatory for an event")
        if not isinstance(name, str) or len(name) > MAX_KEY_CHARS:
            raise RecordError(512, f"evtName must be a string of at most {MAX_KEY_CHARS} characters")
        if name in RESTRICTED_EVENTS:
            raise RecordError(513, f"{name!r} is a restricted system event")
        props = record.evtData if props_checked else (
            {} if record.evtData is None else _check_properties(record.evtData, "evtData"))
        return EventRecord(user, ts_ms, name, props, message_id, ids or None)
    if record.profileData is None:
        raise RecordError(512, "profileData is mandatory for a profile record")
    props = record.profileData if props_checked else _check_properties(record.profileData, "profileData")
    _check_profile_fields(props)
    return ProfileRecord(user, ts_ms, props, ids or None, message_id)


def _echo(record: UploadRecord) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(record).items() if v is not None}


def validate_upload(
    records: list[Any], clock: Callable[[], float] = time.time
) -> tuple[list[Record], list[UnprocessedRecord]]:
    """Split decoded records into normalized ones and CleverTap-shaped rejections.

    Elements that are not JSON objects (possible only through the loose decode) are
    rejected with 512 as CleverTap does for a malformed record.
    """
    now_ms = int(clock() * 1000)
    accepted: list[Record] = []
    rejected: list[UnprocessedRecord] = []
    for record in records:
        if not isinstance(record, UploadRecord):
            if isinstance(record, dict):
                try:
                    record = msgspec.convert(record, UploadRecord)
                except msgspec.ValidationError as exc:
                    rejected.append(UnprocessedRecord("fail", 512, f"invalid record: {exc}", record))
                    continue
            else:
                rejected.append(UnprocessedRecord("fail", 512, "record must be a JSON object", record))
                continue
        try:
            accepted.append(normalize(record, now_ms))
        except RecordError as exc:
            rejected.append(UnprocessedRecord("fail", exc.code, exc.message, _echo(record)))
    return accepted, rejected


# --- the fast path ------------------------------------------------------------------
# Typical records are validated by msgspec in C while decoding: key lengths, property
# counts, scalar values and strings short enough (128 characters can never exceed 512
# bytes of UTF-8). A body with anything else - a long string, a list value, a bad type -
# fails this decode and takes the full path above, so error codes never differ.

_Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS)]
_ShortText = Annotated[str, msgspec.Meta(max_length=MAX_VALUE_BYTES // 4)]
# Integers beyond int64 (but within msgpack's uint64) take the full path.
_Int = Annotated[int, msgspec.Meta(ge=MIN_INT, le=2**63 - 1)]
_Props = Annotated[dict[_Key, _ShortText | _Int | float | bool | None], msgspec.Meta(max_length=MAX_PROPERTIES)]
_Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDENTIFIER_CHARS)] | _Int | None
_Ts = Annotated[int, msgspec.Meta(ge=0, le=MAX_EPOCH_SECONDS)] | None
_MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None


class _FastRecord(msgspec.Struct, kw_only=True, tag_field="type", gc=False):
    """What every clean record may carry besides its payload."""

    identity: _Identifier = None
    objectId: _Identifier = None
    FBID: _Identifier = None
    GPID: _Identifier = None
    ts: _Ts = None
    messageId: _MessageId = None


class FastEvent(_FastRecord, kw_only=True, tag="event"):
    type: ClassVar[str] = "event"
    evtName: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS)]
    evtData: _Props = {}


class FastProfile(_FastRecord, kw_only=True, tag="profile"):
    type: ClassVar[str] = "profile"
    profileData: _Props


class FastUploadBody(msgspec.Struct):
    d: Annotated[list[FastEvent | FastProfile], msgspec.Meta(min_length=1, max_length=MAX_RECORDS)]


_fast_decoder = msgspec.json.Decoder(FastUploadBody)


def validate_fast(body: bytes, clock: Callable[[], float] = time.time) -> list[Record] | None:
    """All records of a clean body, normalized; None when the body needs the full path
    (it does not decode as clean records, or some record is rejected)."""
    try:
        records = _fast_decoder.decode(body).d
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    now_ms = int(clock() * 1000)
    try:
        return [
            _fast_event(record, now_ms) if type(record) is FastEvent else normalize(record, now_ms, props_checked=True)
            for record in records
        ]
    except RecordError:
        return None


def _fast_event(record: FastEvent, now_ms: int) -> EventRecord:
    """`normalize` for an event whose fields the typed decode has checked already."""
    first: str | None = None
    aliases: dict[str, str] | None = None
    for kind in IDENTIFIER_KINDS:
        value = getattr(record, kind)
        if value is not None:
            if first is None:
                first = f"{kind}:{value}"
            else:
                # Another identifier of the same person (e.g. identity and objectId).
                aliases = aliases or {}
                aliases[kind] = str(value)
    if first is None:
        raise RecordError(523, "record has no identity, objectId, FBID or GPID")
    if record.evtName in RESTRICTED_EVENTS:
        raise RecordError(513, f"{record.evtName!r} is a restricted system event")
    ts_ms = now_ms if record.ts is None else record.ts * 1000
    return EventRecord(first, ts_ms, record.evtName, record.evtData, record.messageId, aliases)
