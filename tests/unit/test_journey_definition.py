"""The journey definition language: what it accepts, and errors that name their path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kairos.journeys.definition import (
    EventEntry, JourneyError, ScheduleEntry, SegmentEntry, Send, Split, WaitForEvent, parse_journey,
)

pytestmark = pytest.mark.timeout(30)

VALID: dict[str, Any] = {
    "entry": {"event": "Added To Cart", "where": [{"property": "Amount", "op": "gte", "value": 10}]},
    "match_property": "CartId",
    "start": "wait",
    "nodes": {
        "wait": {"type": "wait_for_event", "event": "Charged", "match": True, "timeout": "1h",
                 "on_event": "done", "on_timeout": "ab"},
        "ab": {"type": "split", "variants": [{"name": "A", "percent": 50, "next": "push"},
                                             {"name": "B", "percent": 50, "next": "later"}]},
        "push": {"type": "send", "channel": "push", "message": {"title": "Hi"}, "next": "vip"},
        "later": {"type": "wait_until", "time": "10:00", "next": "vip"},
        "vip": {"type": "branch", "condition": {"profile": "Tier", "op": "eq", "value": "gold"},
                "yes": "email", "no": None},
        "email": {"type": "send", "channel": "email", "message": {"subject": "For you", "text": "For you"}},
        "done": {"type": "exit"},
    },
    "goal": {"event": "Charged", "match": True, "within": "7d"},
    "exit": [{"event": "Unsubscribed"}],
    "reentry": {"every": "7d"},
    "control_percent": 10,
    "tz": "Asia/Kolkata",
}


def test_a_full_definition_parses() -> None:
    journey = parse_journey(VALID)
    assert isinstance(journey.entry, EventEntry) and journey.entry.where[0].op == "gte"
    assert isinstance(journey.nodes["wait"], WaitForEvent) and journey.nodes["wait"].timeout_ms == 3_600_000
    assert isinstance(journey.nodes["ab"], Split) and [v.name for v in journey.nodes["ab"].variants] == ["A", "B"]
    assert journey.goal_within_ms == 7 * 86_400_000 and journey.reentry.every_ms == 7 * 86_400_000
    assert journey.event_names() == {"Added To Cart", "Charged", "Unsubscribed"}


def test_segment_and_schedule_entries() -> None:
    base = {"start": "hi", "nodes": {"hi": {"type": "send", "channel": "sms", "message": {"text": "x"}}}}
    live = parse_journey({**base, "entry": {"segment": "VIP"}, "exit": [{"left_segment": True}]})
    assert isinstance(live.entry, SegmentEntry) and live.exit_on_segment_exit and live.signal_segment() == "VIP"
    sched = parse_journey({**base, "entry": {"schedule": {"segment": "All", "at": "2026-12-01T09:00:00+05:30",
                                                          "every": "7d"}}})
    assert isinstance(sched.entry, ScheduleEntry) and sched.entry.at_ms == 1_796_095_800_000  # 03:30Z
    assert sched.entry.every_ms == 7 * 86_400_000


def test_a_push_can_fall_back_when_it_is_not_reported_arriving_in_time() -> None:
    node = {"type": "send", "channel": "push", "message": {"title": "Hi"}, "deliver_within": "15m",
            "fallback": [{"channel": "sms", "message": {"text": "Hi"}}]}
    journey = parse_journey({"entry": {"event": "E"}, "start": "n", "nodes": {"n": node}})
    send = journey.nodes["n"]
    assert isinstance(send, Send) and send.deliver_within_ms == 900_000
    for within in ("10s", "4d", "soon"):
        with pytest.raises(JourneyError) as caught:
            parse_journey({"entry": {"event": "E"}, "start": "n", "nodes": {"n": {**node, "deliver_within": within}}})
        assert caught.value.path == "definition.nodes.n.deliver_within"


def broken(path: list[Any], value: Any) -> dict[str, Any]:
    definition = copy.deepcopy(VALID)
    target = definition
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return definition


@pytest.mark.parametrize(("path", "value", "error_path"), [
    (["nodes", "push", "channel"], "pigeon", "definition.nodes.push.channel"),
    (["nodes", "push", "type"], "teleport", "definition.nodes.push.type"),
    (["nodes", "push", "next"], "nowhere", "definition.nodes.push"),
    (["nodes", "email", "next"], "wait", "definition.nodes.email"),  # a loop back to the start
    (["nodes", "wait", "timeout"], "1 hour", "definition.nodes.wait.timeout"),
    (["nodes", "wait", "timeout"], "400d", "definition.nodes.wait.timeout"),
    (["nodes", "later", "time"], "25:00", "definition.nodes.later.time"),
    (["nodes", "ab", "variants", 1, "percent"], 40, "definition.nodes.ab.variants"),
    (["nodes", "vip", "condition"], {"profile": "Tier", "op": "resembles", "value": 1}, "definition.nodes.vip.condition.op"),
    (["nodes", "push", "message"], "hi", "definition.nodes.push.message"),
    (["nodes", "push", "message", "title"], "Hi {{ profile.Name | shout }}", "definition.nodes.push.message.title"),
    (["nodes", "email", "message", "subject"], "{% if %}", "definition.nodes.email.message.subject"),
    (["start"], "missing", "definition.start"),
    (["entry"], {"event": ""}, "definition.entry.event"),
    (["entry", "where", 0, "op"], "like", "definition.entry.where[0].op"),
    (["reentry"], "sometimes", "definition.reentry"),
    (["control_percent"], 95, "definition.control_percent"),
    (["tz"], "Mars/Base", "definition.tz"),
    (["match_property"], KeyError, "definition.goal"),
    (["exit"], [{"left_segment": True}], "definition.exit[0].left_segment"),
    (["colour"], "blue", "definition.colour"),
    (["nodes", "push", "deliver_within"], "15m", "definition.nodes.push.deliver_within"),  # no fallback after it
    (["nodes", "email", "deliver_within"], "15m", "definition.nodes.email.deliver_within"),
])
def test_errors_name_the_offending_path(path: list[Any], value: Any, error_path: str) -> None:
    with pytest.raises(JourneyError) as caught:
        parse_journey(broken(path, value))
    assert caught.value.path == error_path, str(caught.value)


def test_an_unreachable_node_is_refused() -> None:
    definition = copy.deepcopy(VALID)
    definition["nodes"]["orphan"] = {"type": "exit"}
    with pytest.raises(JourneyError, match="cannot be reached") as caught:
        parse_journey(definition)
    assert caught.value.path == "definition.nodes.orphan"


def test_a_schedule_more_often_than_hourly_is_refused() -> None:
    with pytest.raises(JourneyError) as caught:
        parse_journey({"entry": {"schedule": {"segment": "S", "at": "2026-01-01T00:00:00Z", "every": "30m"}},
                       "start": "x", "nodes": {"x": {"type": "exit"}}})
    assert caught.value.path == "definition.entry.schedule.every"
