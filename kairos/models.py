"""Wire and log schemas.

`UploadRecord` is what CleverTap clients send. `EventRecord` / `ProfileRecord` are the
normalized records that travel gateway -> ingest -> shard and are stored, as msgpack,
in the partition logs. They are `array_like` so a stored event costs no field names.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kairos.identity import IDENTIFYING_FORMATS, IDENTIFYING_PROPERTIES, identifying_key, user_key

# --- CleverTap upload (input) ----------------------------------------------------


class UploadRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """One element of `d` in `POST /1/upload`. Fields are `Any` so that a wrongly typed
    field becomes a per-record CleverTap error code, not a failed request."""

    type: Any = None
    identity: Any = None
    objectId: Any = None
    FBID: Any = None
    GPID: Any = None
    ts: Any = None
    evtName: Any = None
    evtData: Any = None
    profileData: Any = None
    # Kairos extension: a client-chosen id that makes a retried record count once.
    messageId: Any = None


class UploadBody(msgspec.Struct):
    d: list[UploadRecord]


class LooseUploadBody(msgspec.Struct):
    """Fallback decode when `d` holds non-objects, so each bad element gets its own error."""

    d: list[Any]


class UnprocessedRecord(msgspec.Struct):
    status: str
    code: int
    error: str
    record: Any


class UploadResponse(msgspec.Struct):
    status: str
    processed: int
    unprocessed: list[UnprocessedRecord]


# --- normalized records (gateway -> ingest -> shard -> log) ------------------------


# Records hold decoded JSON only, which cannot form reference cycles; gc=False spares
# the collector tens of thousands of tracked objects a second on the ingest path.
class EventRecord(msgspec.Struct, tag="e", array_like=True, gc=False, omit_defaults=True):
    user: str  # the identifier it was sent with, kind and value, e.g. "identity:42"
    ts_ms: int
    name: str
    props: dict[str, Any]
    message_id: str | None = None
    # Other identifiers the record carried (kind -> value): they name the same person.
    aliases: dict[str, str] | None = None


class ProfileRecord(msgspec.Struct, tag="p", array_like=True, gc=False):
    user: str
    ts_ms: int
    props: dict[str, Any]
    # Other identifiers the record carried (kind -> value), kept on the profile.
    aliases: dict[str, str] | None = None
    message_id: str | None = None
    # Properties to clear only while they still hold these values: a dead push token is
    # forgotten without erasing a newer one the app sent meanwhile.
    unset_if: dict[str, Any] | None = None


Record = EventRecord | ProfileRecord


class LogBatch(msgspec.Struct, tag="b", array_like=True, gc=False):
    """One durable log entry: the records of one account bound for one partition.

    `users[i]` is the canonical user (see kairos.identity_graph) that `records[i]`
    belongs to. `refused` lists the positions, in the batch as sent, of records the
    shard turned away because their user had been merged into another: the entry
    remembers them so that a retried batch gets the same answer.
    """

    account: str
    users: list[str]
    records: list[Record]
    refused: list[int] = []


class Constituent(msgspec.Struct, array_like=True, gc=False):
    """A user merged into another, remembered so that a demerge can split it back out:
    its identifiers and properties as they were at the merge, and which of the merged
    user's events it brought, as [start, end) spans of rows (of positions, in an export)."""

    source: str
    identifiers: list[str]
    props: dict[str, Any]
    prop_ts: dict[str, int]
    spans: list[tuple[int, int]]


class UserExport(msgspec.Struct, array_like=True, gc=False):
    """Everything a user holds on its shard, as it leaves in a merge."""

    source: str  # the canonical user exported
    identifiers: list[str]
    events: list[EventRecord]
    # Profile properties with the time each was last written, for the merge rule.
    props: dict[str, Any]
    prop_ts: dict[str, int]
    first_seen: int
    last_seen: int
    # Client record ids seen for this user, as (kind, id), so retries stay deduplicated.
    message_ids: list[tuple[str, str]]
    # Users merged into this one earlier, so a late copy of their merge is a no-op.
    absorbed: list[str]
    # ...and what each brought, with spans over `events`, for a later demerge.
    constituents: list[Constituent] = []
    # A part of a demerged user, restoring a user: absorbing it is not a merge.
    restores: bool = False


class SealEntry(msgspec.Struct, tag="s", array_like=True, gc=False):
    """Log entry: each `users[i]` has been merged into `into[i]`; their records go there
    from now on."""

    account: str
    users: list[str]
    into: list[str]


class AbsorbEntry(msgspec.Struct, tag="a", array_like=True, gc=False):
    """Log entry: each sealed `data[i].source` is merged into `users[i]` with all it held."""

    account: str
    users: list[str]
    data: list[UserExport]


LogEntry = LogBatch | SealEntry | AbsorbEntry


class ShardBlob(msgspec.Struct, array_like=True, gc=False):
    """A log batch on its way to the shard that owns `partition`. `batch_id` is derived
    from the request id, so a retried hop carries the same id and is applied once."""

    partition: int
    batch_id: str
    payload: bytes  # msgpack of LogBatch; stored in the log as it is


class UploadBatch(msgspec.Struct, array_like=True, gc=False):
    """An upload's validated records, gateway -> ingest, with each record's identifier
    up front so the ingest stage routes records without decoding them. `links[i]` holds
    the other identifiers of record i, for the few records that carry more than one."""

    identifiers: list[str]
    links: dict[int, list[str]]
    records: list[Record]


class RoutableBatch(msgspec.Struct, array_like=True, gc=False):
    """The bytes of an `UploadBatch` seen by ingest: records stay undecoded msgpack."""

    identifiers: list[str]
    links: dict[int, list[str]]
    records: list[msgspec.Raw]


class RawLogBatch(msgspec.Struct, tag="b", array_like=True, gc=False):
    """Encodes to exactly the bytes of a `LogBatch`, from records never decoded."""

    account: str
    users: list[str]
    records: list[msgspec.Raw]


def record_identifiers(record: Record) -> list[str]:
    """Every identifier a record carries, the one it was sent with first."""
    found = [record.user]
    if record.aliases:
        found.extend(user_key(kind, value) for kind, value in record.aliases.items())
    if type(record) is ProfileRecord:
        for name in IDENTIFYING_PROPERTIES:
            value = record.props.get(name)
            if isinstance(value, str) and IDENTIFYING_FORMATS[name].fullmatch(value):
                found.append(identifying_key(name, value))
    return list(dict.fromkeys(found))


def encode_upload(records: list[Record]) -> bytes:
    links: dict[int, list[str]] = {}
    for i, record in enumerate(records):
        if record.aliases or (type(record) is ProfileRecord and ("Email" in record.props or "Phone" in record.props)):
            extra = record_identifiers(record)[1:]
            if extra:
                links[i] = extra
    return record_list_encoder.encode(UploadBatch([r.user for r in records], links, records))


record_list_encoder = msgspec.msgpack.Encoder()
routable_decoder = msgspec.msgpack.Decoder(RoutableBatch)
log_entry_decoder = msgspec.msgpack.Decoder(LogEntry)


class Trigger(msgspec.Struct, array_like=True, gc=False):
    """An event a shard forwards because some journey of its account reacts to it."""

    account: str
    user: str
    event: str
    ts_ms: int
    props: dict[str, Any]
    # When the shard took it (its batch's log id); 0 where unknown. Set by the reader.
    ingested_ms: int = 0
