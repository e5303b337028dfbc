"""CleverTap upload record validation: per-record error codes and normalization."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from kairos.models import EventRecord, ProfileRecord, UnprocessedRecord, UploadBody, UploadRecord
import kairos.upload as upload_module
from kairos.upload import MAX_RECORDS, RESTRICTED_EVENTS, validate_upload

pytestmark = pytest.mark.timeout(60)

NOW_S = 1_700_000_000.25
NOW_MS = 1_700_000_000_250


def clock() -> float:
    return NOW_S


def event(**fields: Any) -> dict[str, Any]:
    return {"type": "event", "identity": 42, "evtName": "Charged", "evtData": {"Amount": 10}, **fields}


def profile(**fields: Any) -> dict[str, Any]:
    return {"type": "profile", "identity": 42, "profileData": {"Name": "Ada"}, **fields}


def only_rejection(record: Any) -> UnprocessedRecord:
    accepted, rejected = validate_upload([record], clock)
    assert accepted == [], f"expected {record!r} to be rejected, got {accepted!r}"
    assert len(rejected) == 1
    assert rejected[0].status == "fail"
    assert rejected[0].error, "a rejection must say what is wrong"
    return rejected[0]


def only_accepted(record: Any) -> EventRecord | ProfileRecord:
    accepted, rejected = validate_upload([record], clock)
    assert rejected == [], f"expected {record!r} to be accepted, got {rejected!r}"
    assert len(accepted) == 1
    return accepted[0]


# --- per-record error codes ------------------------------------------------------

REJECTIONS = [
    # 509: event name mandatory
    pytest.param(509, {"type": "event", "identity": 1, "evtData": {}}, id="509-no-evtName"),
    pytest.param(509, event(evtName=""), id="509-empty-evtName"),
    # 512: invalid structure
    pytest.param(512, event(evtName=5), id="512-evtName-not-string"),
    pytest.param(512, event(evtName="E" * 121), id="512-evtName-121-chars"),
    pytest.param(512, event(evtData=[1, 2]), id="512-evtData-not-object"),
    pytest.param(512, event(evtData={"k" * 121: 1}), id="512-key-121-chars"),
    pytest.param(512, event(evtData={"": 1}), id="512-empty-key"),
    pytest.param(512, event(evtData={"k": "x" * 513}), id="512-value-513-bytes"),
    pytest.param(512, event(evtData={"k": "\u20ac" * 171}), id="512-value-513-bytes-multibyte"),
    pytest.param(512, event(evtData={"k": ["a" * 100] * 30}), id="512-composite-too-large"),
    pytest.param(512, {"type": "profile", "identity": 1}, id="512-no-profileData"),
    pytest.param(512, profile(profileData="Ada"), id="512-profileData-not-object"),
    pytest.param(512, profile(profileData={"k" * 121: "v"}), id="512-profile-key-121-chars"),
    pytest.param(512, event(messageId=""), id="512-empty-messageId"),
    pytest.param(512, event(messageId=7), id="512-messageId-not-string"),
    pytest.param(512, event(messageId="m" * 257), id="512-messageId-257-chars"),
    # 513: restricted system event
    pytest.param(513, event(evtName="App Launched"), id="513-App-Launched"),
    pytest.param(513, event(evtName="Notification Clicked"), id="513-Notification-Clicked"),
    # 514-520: profile fields
    pytest.param(514, profile(profileData={"Gender": "Male"}), id="514-gender"),
    pytest.param(515, profile(profileData={"Email": "not-an-email"}), id="515-email"),
    pytest.param(515, profile(profileData={"Email": 5}), id="515-email-number"),
    pytest.param(516, profile(profileData={"Phone": "9876543210"}), id="516-phone-no-plus"),
    pytest.param(516, profile(profileData={"Phone": "+91 98765"}), id="516-phone-space"),
    pytest.param(517, profile(profileData={"Employed": "yes"}), id="517-employed"),
    pytest.param(518, profile(profileData={"Education": "PhD"}), id="518-education"),
    pytest.param(519, profile(profileData={"Married": "maybe"}), id="519-married"),
    pytest.param(520, profile(profileData={"Age": 151}), id="520-age-151"),
    pytest.param(520, profile(profileData={"Age": -1}), id="520-age-negative"),
    pytest.param(520, profile(profileData={"Age": "30"}), id="520-age-string"),
    pytest.param(520, profile(profileData={"Age": True}), id="520-age-bool"),
    # 522: too many properties
    pytest.param(522, event(evtData={f"p{i}": i for i in range(257)}), id="522-257-event-props"),
    pytest.param(522, profile(profileData={f"p{i}": i for i in range(257)}), id="522-257-profile-props"),
    # 523: missing / invalid identity
    pytest.param(523, {"type": "event", "evtName": "Charged"}, id="523-no-identifier"),
    pytest.param(523, event(identity=None), id="523-identity-null"),
    pytest.param(523, event(identity=True), id="523-identity-bool"),
    pytest.param(523, event(identity=4.5), id="523-identity-float"),
    pytest.param(523, event(identity={"id": 1}), id="523-identity-object"),
    pytest.param(523, event(identity=""), id="523-identity-empty"),
    pytest.param(523, event(identity="x" * 1025), id="523-identity-too-long"),
    pytest.param(523, {"type": "event", "FBID": [1], "evtName": "Charged"}, id="523-FBID-list"),
    # 524: neither event nor profile
    pytest.param(524, event(type="evnt"), id="524-typo"),
    pytest.param(524, {"identity": 1, "evtName": "Charged"}, id="524-no-type"),
    # 525: ts not epoch seconds
    pytest.param(525, event(ts="1700000000"), id="525-ts-string"),
    pytest.param(525, event(ts=-1), id="525-ts-negative"),
    pytest.param(525, event(ts=1_700_000_000_000_000), id="525-ts-microseconds"),
    pytest.param(525, event(ts=True), id="525-ts-bool"),
    # 526: invalid objectId
    pytest.param(526, {"type": "event", "objectId": True, "evtName": "Charged"}, id="526-objectId-bool"),
    pytest.param(526, {"type": "event", "objectId": "", "evtName": "Charged"}, id="526-objectId-empty"),
    pytest.param(526, {"type": "event", "objectId": {"a": 1}, "evtName": "Charged"}, id="526-objectId-object"),
]


@pytest.mark.parametrize(("code", "record"), REJECTIONS)
def test_per_record_error_code(code: int, record: dict[str, Any]) -> None:
    rejection = only_rejection(record)
    assert rejection.code == code, rejection.error


@pytest.mark.parametrize(("code", "record"), REJECTIONS[:6])
def test_same_codes_for_records_already_decoded_as_structs(code: int, record: dict[str, Any]) -> None:
    # The gateway's fast path hands in UploadRecord structs, not dicts.
    rejection = only_rejection(msgspec.convert(record, UploadRecord))
    assert rejection.code == code


@pytest.mark.parametrize("element", [5, "record", [1, 2], None])
def test_non_object_element_is_512_and_echoed(element: Any) -> None:
    rejection = only_rejection(element)
    assert rejection.code == 512
    assert rejection.record == element


def test_every_restricted_event_is_513() -> None:
    accepted, rejected = validate_upload([event(evtName=name) for name in sorted(RESTRICTED_EVENTS)], clock)
    assert accepted == []
    assert [r.code for r in rejected] == [513] * len(RESTRICTED_EVENTS)


def test_restricted_event_check_is_exact() -> None:
    # A custom event whose name merely resembles a system event is the client's own.
    assert only_accepted(event(evtName="App Launched Twice")).name == "App Launched Twice"


# --- limits: the boundary values are accepted ------------------------------------


def test_120_char_key_and_512_byte_value_are_accepted() -> None:
    record = only_accepted(event(evtName="E" * 120, evtData={"k" * 120: "x" * 512, "m": "\u20ac" * 170}))
    assert isinstance(record, EventRecord)
    assert record.name == "E" * 120
    assert record.props["k" * 120] == "x" * 512


def test_256_properties_are_accepted() -> None:
    props = {f"p{i}": i for i in range(256)}
    assert only_accepted(event(evtData=props)).props == props
    assert only_accepted(profile(profileData=props)).props == props


def test_boundary_profile_fields_are_accepted() -> None:
    data = {
        "Email": "ada@example.com", "Phone": "+919876543210", "Gender": "F", "Employed": "Y",
        "Education": "Graduate", "Married": "N", "Age": 0,
    }
    assert only_accepted(profile(profileData=data)).props == data
    assert only_accepted(profile(profileData={"Age": 150})).props == {"Age": 150}


def test_1000_record_cap_is_not_enforced_here() -> None:
    # The gateway answers 400 for more than MAX_RECORDS; validation handles any count.
    assert MAX_RECORDS == 1000
    records = [event(identity=i) for i in range(MAX_RECORDS + 1)]
    accepted, rejected = validate_upload(records, clock)
    assert rejected == []
    assert len(accepted) == MAX_RECORDS + 1


# --- normalization ---------------------------------------------------------------


def test_event_is_normalized() -> None:
    record = only_accepted(event(ts=1_700_000_123, messageId="m-1"))
    assert record == EventRecord("identity:42", 1_700_000_123_000, "Charged", {"Amount": 10}, "m-1")


def test_identity_number_and_string_are_the_same_user() -> None:
    assert only_accepted(event(identity=42)).user == "identity:42"
    assert only_accepted(event(identity="42")).user == "identity:42"


@pytest.mark.parametrize(
    ("ids", "user"),
    [
        ({"objectId": "obj-1"}, "objectId:obj-1"),
        ({"FBID": 77}, "FBID:77"),
        ({"GPID": "g"}, "GPID:g"),
        ({"GPID": "g", "objectId": "o", "identity": "i"}, "identity:i"),
        ({"GPID": "g", "FBID": "f"}, "FBID:f"),
    ],
)
def test_identifier_precedence(ids: dict[str, Any], user: str) -> None:
    record = {"type": "event", "evtName": "Charged", **ids}
    assert only_accepted(record).user == user


def test_objectId_42_and_identity_42_are_different_users() -> None:
    a = only_accepted(event(identity=42))
    b = only_accepted({"type": "event", "objectId": 42, "evtName": "Charged"})
    assert a.user != b.user


def test_float_ts_seconds_keep_milliseconds() -> None:
    assert only_accepted(event(ts=1_700_000_000.5)).ts_ms == 1_700_000_000_500


def test_ts_zero_is_a_timestamp_not_missing() -> None:
    assert only_accepted(event(ts=0)).ts_ms == 0


def test_missing_ts_uses_the_injected_clock() -> None:
    assert only_accepted(event()).ts_ms == NOW_MS
    assert only_accepted(profile()).ts_ms == NOW_MS


def test_clock_is_read_once_per_upload() -> None:
    calls = []

    def counting_clock() -> float:
        calls.append(1)
        return NOW_S + len(calls)

    accepted, _ = validate_upload([event(), event(), event()], counting_clock)
    assert len(calls) == 1
    assert {r.ts_ms for r in accepted} == {NOW_MS + 1000}


def test_event_without_evtData_has_empty_props() -> None:
    record = only_accepted({"type": "event", "identity": 1, "evtName": "Opened"})
    assert record.props == {}


def test_profile_is_normalized_with_other_identifiers_as_aliases() -> None:
    record = only_accepted(profile(objectId="obj-9", GPID=123, ts=1_600_000_000, messageId="p-1"))
    assert record == ProfileRecord(
        "identity:42", 1_600_000_000_000, {"Name": "Ada"}, {"objectId": "obj-9", "GPID": "123"}, "p-1"
    )


def test_profile_with_single_identifier_has_no_aliases() -> None:
    assert only_accepted(profile()).aliases is None


def test_nested_values_are_kept_as_sent() -> None:
    data = {"items": [{"sku": "a", "qty": 2}], "meta": {"coupon": None, "gift": True}, "price": 9.99}
    assert only_accepted(event(evtData=data)).props == data


# --- mixed batches and echo ------------------------------------------------------


def test_mixed_batch_keeps_order_and_echoes_original_record() -> None:
    bad_gender = profile(profileData={"Gender": "X"})
    bad_type = {"type": "bogus", "identity": "u7", "ts": 1_700_000_000, "evtName": "E"}
    records = [event(identity=1), bad_gender, event(identity=2), bad_type, 17]
    accepted, rejected = validate_upload(records, clock)
    assert [r.user for r in accepted] == ["identity:1", "identity:2"]
    assert [(r.status, r.code) for r in rejected] == [("fail", 514), ("fail", 524), ("fail", 512)]
    assert rejected[0].record == bad_gender
    assert rejected[1].record == bad_type
    assert rejected[2].record == 17


def test_echo_of_a_record_decoded_from_the_wire() -> None:
    raw = b'{"d":[{"type":"event","objectId":"o-1","evtName":"Notification Sent","evtData":{"a":[1,2]}}]}'
    body = msgspec.json.decode(raw, type=UploadBody)
    _, rejected = validate_upload(body.d, clock)
    assert rejected[0].code == 513
    assert rejected[0].record == {
        "type": "event", "objectId": "o-1", "evtName": "Notification Sent", "evtData": {"a": [1, 2]},
    }
    # The response must encode as CleverTap's shape.
    encoded = msgspec.json.decode(msgspec.json.encode(rejected[0]))
    assert set(encoded) == {"status", "code", "error", "record"}


def test_validated_records_survive_the_msgpack_hop() -> None:
    from kairos.models import UploadBatch, encode_upload

    accepted, _ = validate_upload([
        event(ts=1), profile(objectId="o", messageId="x", profileData={"Email": "a@b.co", "Phone": "+447700900123"}),
    ], clock)
    batch = msgspec.msgpack.decode(encode_upload(accepted), type=UploadBatch)
    assert batch.records == accepted
    assert batch.identifiers == [r.user for r in accepted]
    # Only records naming more than one identifier carry links: they tie identifiers.
    assert batch.links == {1: ["objectId:o", "Email:a@b.co", "Phone:+447700900123"]}



@pytest.mark.parametrize(
    "record",
    [
        event(evtData={"n": 2**64}),
        event(evtData={"n": -(2**63) - 1}),
        event(evtData={"n": [1, 2**64]}),
        profile(profileData={"Score": {"raw": 2**70}}),
    ],
    ids=["event-2**64", "event-below-int64", "event-in-list", "profile-nested"],
)
def test_accepted_records_always_encode_for_the_log(record: dict[str, Any]) -> None:
    from kairos.models import encode_upload

    body = msgspec.json.encode({"d": [record]})  # valid JSON a client can send
    accepted, rejected = validate_upload(msgspec.json.decode(body)["d"], clock)
    if rejected:
        assert rejected[0].code == 512
    else:
        encode_upload(accepted)

# --- the typed fast path must agree with the full path -----------------------------------

fast_path = getattr(upload_module, "validate_fast", None)


def full_path(body: bytes) -> tuple[list[Any], list[UnprocessedRecord]]:
    from kairos.models import LooseUploadBody

    return validate_upload(msgspec.json.decode(body, type=LooseUploadBody).d, clock)


def clean_records(n: int, seed: int) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    values: list[Any] = [0, -3, 2**40, 1.5, 3.0, "", "x" * 128, "caf\u00e9", True, False, None]
    out: list[dict[str, Any]] = []
    for i in range(n):
        ids: dict[str, Any] = {}
        for kind in ("identity", "objectId", "FBID", "GPID"):
            if rng.random() < 0.4:
                ids[kind] = rng.choice([i, f"u-{i}", 0, "k" * 1024])
        if not ids:
            ids["GPID"] = f"g{i}"
        record: dict[str, Any] = {**ids}
        if rng.random() < 0.7:
            record["ts"] = rng.choice([0, 1_700_000_000, 99_999_999_999])
        if rng.random() < 0.3:
            record["messageId"] = f"m-{i}"
        props = {f"k{j}" if j else "k" * 120: rng.choice(values) for j in range(rng.randint(0, 6))}
        if rng.random() < 0.6:
            record.update(type="event", evtName=rng.choice(["Charged", "E" * 120, "App Launched Twice"]))
            if props or rng.random() < 0.5:
                record["evtData"] = props
        else:
            props.update(rng.choice([{}, {"Email": "a@b.co", "Phone": "+4412345678", "Age": 40, "Gender": "O"}]))
            record.update(type="profile", profileData=props)
        out.append(record)
    return out


@pytest.mark.skipif(fast_path is None, reason="no fast path in kairos.upload")
@pytest.mark.parametrize("seed", range(8))
def test_fast_path_normalizes_clean_bodies_like_the_full_path(seed: int) -> None:
    body = msgspec.json.encode({"d": clean_records(60, seed)})
    accepted, rejected = full_path(body)
    assert rejected == []
    assert fast_path(body, clock) == accepted


@pytest.mark.skipif(fast_path is None, reason="no fast path in kairos.upload")
@pytest.mark.parametrize(("code", "record"), REJECTIONS)
def test_fast_path_defers_every_rejection_to_the_full_path(code: int, record: dict[str, Any]) -> None:
    body = msgspec.json.encode({"d": [event(identity="ok"), record]})
    assert fast_path(body, clock) is None
    accepted, rejected = full_path(body)
    assert [r.code for r in rejected] == [code]
    assert len(accepted) == 1


@pytest.mark.skipif(fast_path is None, reason="no fast path in kairos.upload")
@pytest.mark.parametrize(
    "record",
    [
        event(evtData={"long": "x" * 300}),  # longer than the fast path checks, still valid
        event(evtData={"nested": {"a": [1, 2]}}),
        event(evtData=None),
        event(ts=1_700_000_000.5),
        profile(profileData={"Tags": ["a", "b"]}),
    ],
)
def test_valid_records_outside_the_fast_path_are_still_accepted(record: dict[str, Any]) -> None:
    body = msgspec.json.encode({"d": [record]})
    fast = fast_path(body, clock)
    accepted, rejected = full_path(body)
    assert rejected == [] and len(accepted) == 1
    assert fast is None or fast == accepted


def test_only_well_formed_emails_and_phones_identify_a_profile() -> None:
    from kairos.models import ProfileRecord, record_identifiers

    junk = ProfileRecord("identity:1", 0, {"Email": "n/a", "Phone": "0"}, {"objectId": "d"})
    assert record_identifiers(junk) == ["identity:1", "objectId:d"]
    good = ProfileRecord("identity:1", 0, {"Email": "a@b.co", "Phone": "+447700900123"})
    assert record_identifiers(good) == ["identity:1", "Email:a@b.co", "Phone:+447700900123"]
