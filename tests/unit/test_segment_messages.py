"""Segment messages to Kairos records: identifiers, calls, timestamps, context, errors."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from kairos.models import EventRecord, ProfileRecord, Record
from kairos.segment_messages import Message, MessageError, event_time_ms, flatten, to_records

pytestmark = pytest.mark.timeout(10)

NOW = 1_790_000_000.0  # the server's clock, epoch seconds
NOW_MS = int(NOW * 1000)


def convert(call: str, sent_at: Any = None, context: Any = None, **fields: Any) -> list[Record]:
    message = msgspec.convert(fields, Message)
    return to_records([(call, message)], sent_at, context, clock=lambda: NOW)


def test_track_with_a_user_id_is_an_event_of_that_customer() -> None:
    [record] = convert("track", userId="u1", event="Order Completed", properties={"revenue": 42}, messageId="m1")
    assert record == EventRecord("identity:u1", NOW_MS, "Order Completed", {"revenue": 42}, "m1", None)


def test_user_id_and_anonymous_id_together_tie_the_two() -> None:
    [record] = convert("track", userId="u1", anonymousId="a1", event="E")
    assert record.user == "identity:u1" and record.aliases == {"anonymousId": "a1"}
    [record] = convert("track", anonymousId="a1", event="E")
    assert record.user == "anonymousId:a1" and record.aliases is None


def test_identify_writes_traits_with_clevertap_names_for_email_phone_and_name() -> None:
    [record] = convert("identify", userId=7, traits={"email": "ada@example.com", "phone": "+447700900123",
                                                      "name": "Ada", "plan": "pro"})
    assert isinstance(record, ProfileRecord)
    assert record.user == "identity:7"
    assert record.props == {"Email": "ada@example.com", "Phone": "+447700900123", "Name": "Ada", "plan": "pro"}
    # A malformed email stays a plain trait: it is not an identifier.
    [record] = convert("identify", userId=7, traits={"email": "not an email"})
    assert record.props == {"email": "not an email"}


def test_page_screen_group_and_alias() -> None:
    [page] = convert("page", anonymousId="a", name="Pricing", category="Docs", properties={"path": "/pricing"})
    assert (page.name, page.props) == ("Page Viewed", {"path": "/pricing", "name": "Pricing", "category": "Docs"})
    [screen] = convert("screen", userId="u", name="Home")
    assert (screen.name, screen.props) == ("Screen Viewed", {"name": "Home"})
    [group] = convert("group", userId="u", groupId="g1", traits={"name": "Acme", "address": {"city": "Pune"}})
    assert group.props == {"groupId": "g1", "group.name": "Acme", "group.address.city": "Pune"}
    alias = to_records([("alias", Message(userId="u", previousId="old"))], previous_kind=lambda p: "identity",
                       clock=lambda: NOW)[0]
    assert (alias.user, alias.aliases) == ("identity:u", {"identity": "old"})


def test_context_is_kept_on_the_profile_flattened_once_per_user() -> None:
    messages = [
        ("track", Message(userId="u", event="A", context={"os": {"name": "iOS"}})),
        ("track", Message(userId="u", event="B", context={"os": {"name": "Android"}})),
        ("identify", Message(userId="v", traits={"plan": "pro"}, context={"locale": "en-GB"})),
    ]
    records = to_records(messages, batch_context={"library": {"name": "analytics-python"}}, clock=lambda: NOW)
    # u's context is written once, after u's last message, so it lands in log order.
    assert [type(r).__name__ for r in records] == ["EventRecord", "EventRecord", "ProfileRecord", "ProfileRecord"]
    assert records[2] == ProfileRecord("identity:u", NOW_MS, {
        "context.library.name": "analytics-python", "context.os.name": "Android"})
    assert records[3].props == {"plan": "pro", "context.library.name": "analytics-python", "context.locale": "en-GB"}


def test_sent_at_corrects_the_device_clock() -> None:
    # The device's clock is 1 h fast: it stamped the event at 12:00:00 and sent it at
    # 12:00:05 by that clock; the server received it at NOW. So it happened 5 s before NOW.
    message = Message(timestamp="2030-01-01T12:00:00Z", sentAt="2030-01-01T12:00:05Z")
    assert event_time_ms(message, None, NOW_MS) == NOW_MS - 5000
    batch_level = Message(originalTimestamp="2030-01-01T12:00:00+00:00")
    assert event_time_ms(batch_level, "2030-01-01T12:00:02.500+00:00", NOW_MS) == NOW_MS - 2500
    # Without sentAt the message's own time stands; without any time, arrival.
    assert event_time_ms(Message(timestamp="2020-01-01T00:00:00Z"), None, NOW_MS) == 1_577_836_800_000
    assert event_time_ms(Message(), None, NOW_MS) == NOW_MS


@pytest.mark.parametrize("call, fields, error", [
    ("track", {"event": "E"}, "userId or anonymousId is required"),
    ("track", {"userId": "u"}, "event is required"),
    ("track", {"userId": "u", "event": "E", "properties": [1]}, "properties must be an object"),
    ("track", {"userId": {"a": 1}, "event": "E"}, "userId must be a string"),
    ("track", {"userId": "u", "event": "E", "timestamp": "yesterday"}, "timestamp must be an ISO-8601 time"),
    ("track", {"userId": "u", "event": "E", "messageId": ""}, "messageId must be a string"),
    ("identify", {"userId": "u", "traits": "pro"}, "traits must be an object"),
    ("alias", {"userId": "u"}, "alias needs both userId and previousId"),
    ("group", {"userId": "u"}, "groupId is required"),
    ("track", {"type": "identify", "userId": "u", "event": "E"}, "type is 'identify' but the call is 'track'"),
])
def test_bad_messages_are_named_with_their_position(call: str, fields: dict[str, Any], error: str) -> None:
    good = ("track", Message(userId="u", event="Fine"))
    with pytest.raises(MessageError, match=f"message 1 \\({call}\\): {error}"):
        to_records([good, (call, msgspec.convert(fields, Message))], clock=lambda: NOW)


def test_values_the_log_cannot_hold_and_odd_times_are_refused() -> None:
    deep: Any = 1
    for _ in range(600):  # deeper than Python's stack would walk recursively
        deep = [deep]
    for fields, error in (
        ({"properties": {"n": 2**70}}, "outside \\[-2\\^63, 2\\^64-1\\]"),
        ({"properties": {"a": deep}}, "nests deeper than 16"),
        ({"timestamp": "0001-01-01T00:00:00Z"}, "between 1970 and 9999"),
        ({"timestamp": "2030-01-01T00:00:00Z", "sentAt": "9999-01-01T00:00:00Z"}, "before 1970"),
        ({"event": "App Launched"}, "restricted system event"),
    ):
        with pytest.raises(MessageError, match=error):
            convert("track", **{"userId": "u", "event": "E", **fields})
    assert convert("track", userId="u", event="E", timestamp="2004-09-24T17:30:29.518Z")[0].ts_ms == 1_096_047_029_518


def test_flatten_keeps_lists_as_values() -> None:
    assert flatten("c", {"a": {"b": 1, "l": [1, {"x": 2}]}, "z": None}, {}) == {"c.a.b": 1, "c.a.l": [1, {"x": 2}], "c.z": None}
