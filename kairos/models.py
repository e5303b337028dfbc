"""Wire and log schemas.

`UploadRecord` is what CleverTap clients send. `EventRecord` / `ProfileRecord` are the
normalized records that travel gateway -> ingest -> shard and are stored, as msgpack,
in the partition logs. They are `array_like` so a stored event costs no field names.
"""

from __future__ import annotations

from typing import Any

import msgspec

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
class EventRecord(msgspec.Struct, tag="e", array_like=True, gc=False):
    user: str  # identifier kind and value, e.g. "identity:42"; see kairos.identity
    ts_ms: int
    name: str
    props: dict[str, Any]
    message_id: str | None = None


class ProfileRecord(msgspec.Struct, tag="p", array_like=True, gc=False):
    user: str
    ts_ms: int
    props: dict[str, Any]
    # Other identifiers the record carried (kind -> value), kept on the profile.
    aliases: dict[str, str] | None = None
    message_id: str | None = None


Record = EventRecord | ProfileRecord


class LogBatch(msgspec.Struct, array_like=True, gc=False):
    """One durable log entry: the records of one account bound for one partition."""

    account: str
    records: list[Record]


class ShardBlob(msgspec.Struct, array_like=True, gc=False):
    """A log batch on its way to the shard that owns `partition`. `batch_id` is derived
    from the request id, so a retried hop carries the same id and is applied once."""

    partition: int
    batch_id: str
    payload: bytes  # msgpack of LogBatch; stored in the log as it is


class UploadBatch(msgspec.Struct, array_like=True, gc=False):
    """An upload's validated records, gateway -> ingest, with each record's user key up
    front so the ingest stage routes records without decoding them."""

    users: list[str]
    records: list[Record]


class RoutableBatch(msgspec.Struct, array_like=True, gc=False):
    """The bytes of an `UploadBatch` seen by ingest: records stay undecoded msgpack."""

    users: list[str]
    records: list[msgspec.Raw]


class RawLogBatch(msgspec.Struct, array_like=True, gc=False):
    """Encodes to exactly the bytes of a `LogBatch`, from records never decoded."""

    account: str
    records: list[msgspec.Raw]


def encode_upload(records: list[Record]) -> bytes:
    return record_list_encoder.encode(UploadBatch([r.user for r in records], records))


record_list_encoder = msgspec.msgpack.Encoder()
routable_decoder = msgspec.msgpack.Decoder(RoutableBatch)
log_batch_decoder = msgspec.msgpack.Decoder(LogBatch)
