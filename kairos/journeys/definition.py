"""The journey definition language: JSON in, a validated graph out.

    {"entry": {"event": "Added To Cart", "where": [...]},
     "start": "wait_charge",
     "nodes": {
       "wait_charge": {"type": "wait_for_event", "event": "Charged", "match": "CartId",
                       "timeout": "1h", "on_event": "done", "on_timeout": "push"},
       "push": {"type": "send", "channel": "push", "message": {"title": "Your cart"}, "next": "done"},
       "done": {"type": "exit"}},
     "goal": {"event": "Charged", "match": "CartId"},
     "exit": [{"event": "Unsubscribed"}],
     "reentry": "always", "control_percent": 10, "tz": "UTC"}

Entry is an event (with `where` filters), entering a live segment (`{"segment": S}`),
or a schedule over a segment (`{"schedule": {"segment": S, "at": ISO, "every": "7d"}}`).
The graph must be acyclic and every node reachable from `start`, so a user always
leaves in a bounded number of steps. Errors name their path, as segments' do.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Any, Union

import msgspec

from kairos.segments.definition import (
    PropertyFilter, SegmentError, event_name, no_extra_fields, parse_duration, parse_instant,
    parse_segment, parse_time_of_day, parse_where,
)
from kairos.segments.timing import zone
from kairos.channels.messages import CHANNELS, check_content
from kairos.templates import check_message, event_properties

JourneyError = SegmentError  # one error shape (path + message) for every definition language

QUIET_HOURS_MODES = ("drop", "delay", "ignore")
MAX_NODES = 100
MAX_MESSAGE_BYTES = 32 * 1024
# Templates are read by walking the message: no payload needs more levels than this.
MAX_MESSAGE_DEPTH = 32
NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_WAIT_MS = 366 * 86_400_000
MIN_DELIVER_WITHIN_MS, MAX_DELIVER_WITHIN_MS = 60_000, 3 * 86_400_000


class EventEntry(msgspec.Struct, frozen=True):
    event: str
    where: tuple[PropertyFilter, ...] = ()


class SegmentEntry(msgspec.Struct, frozen=True):
    """Enter when the user enters the live segment."""

    segment: str


class ScheduleEntry(msgspec.Struct, frozen=True):
    """Enter every member of the segment at `at_ms`, and every `every_ms` after it."""

    segment: str
    at_ms: int
    every_ms: int | None = None


Entry = Union[EventEntry, SegmentEntry, ScheduleEntry]


class Fallback(msgspec.Struct, frozen=True, array_like=True):
    """The next channel to try when the one before cannot reach the user."""

    channel: str
    message: dict[str, Any]


class Send(msgspec.Struct, frozen=True):
    channel: str
    message: dict[str, Any]
    next: str | None
    fallback: tuple[Fallback, ...] = ()
    quiet_hours: str | None = None  # drop | delay | ignore; None: the account's setting
    respect_caps: bool = True  # False for transactional messages (a receipt, a password reset)
    # A push the app has not reported arriving within this long falls back to the next
    # channel (0: a push FCM accepted counts as reached).
    deliver_within_ms: int = 0


class Wait(msgspec.Struct, frozen=True):
    duration_ms: int
    next: str | None


class WaitUntil(msgspec.Struct, frozen=True):
    """Until the clock next reads `at` in the user's time zone (profile `Tz`, else the journey's)."""

    at: time
    next: str | None


class WaitForEvent(msgspec.Struct, frozen=True):
    """Until the user does `event` (with `where`, and carrying the entry event's value of
    the journey's match property when `match`) or `timeout_ms` passes."""

    event: str
    where: tuple[PropertyFilter, ...]
    match: bool
    timeout_ms: int
    on_event: str | None
    on_timeout: str | None


class Branch(msgspec.Struct, frozen=True):
    condition_raw: Any  # as written (checked on save): shards evaluate it with the segment engine
    yes: str | None
    no: str | None


class Variant(msgspec.Struct, frozen=True):
    name: str
    percent: int
    next: str | None


class Split(msgspec.Struct, frozen=True):
    """A stable random split: a user always lands in the same variant of a node."""

    variants: tuple[Variant, ...]


class Exit(msgspec.Struct, frozen=True):
    pass


Node = Union[Send, Wait, WaitUntil, WaitForEvent, Branch, Split, Exit]


class EventRule(msgspec.Struct, frozen=True):
    """An event that ends the journey for the user: a goal (conversion) or an exit."""

    event: str
    where: tuple[PropertyFilter, ...]
    match: bool


class Reentry(msgspec.Struct, frozen=True):
    """`once`: never again; `always`: whenever not in the journey; else at most once per
    `every_ms` (counted from the previous entry)."""

    kind: str
    every_ms: int = 0


class Journey(msgspec.Struct, frozen=True):
    entry: Entry
    start: str
    nodes: dict[str, Node]
    goal: EventRule | None
    goal_within_ms: int | None
    exits: tuple[EventRule, ...]
    exit_on_segment_exit: bool
    reentry: Reentry
    control_percent: int
    tz: str
    # The entry event property that `match` compares (one per journey: a cart id, an order id).
    match_property: str | None
    # Messages from this journey a minute, over all users (None: no limit).
    throttle_per_minute: int | None = None
    # The entry event's properties its messages' templates read: kept while users wait.
    # None: every property (a template reads the event whole).
    event_properties: frozenset[str] | None = frozenset()

    def event_names(self) -> set[str]:
        """Every event the journey reacts to: what a shard must forward to it."""
        names = {rule.event for rule in self.exits}
        if self.goal is not None:
            names.add(self.goal.event)
        if isinstance(self.entry, EventEntry):
            names.add(self.entry.event)
        names.update(node.event for node in self.nodes.values() if isinstance(node, WaitForEvent))
        return names

    def signal_segment(self) -> str | None:
        """The live segment whose signals the journey reads (entry or exit), if any."""
        return self.entry.segment if isinstance(self.entry, SegmentEntry) else None


def parse_journey(raw: Any, path: str = "definition") -> Journey:
    if not isinstance(raw, dict):
        raise JourneyError(path, "must be an object with 'entry', 'start' and 'nodes'")
    no_extra_fields(raw, {"entry", "start", "nodes", "goal", "exit", "reentry", "control_percent", "tz",
                          "match_property", "throttle_per_minute"}, path)
    tz = raw.get("tz", "UTC")
    if not isinstance(tz, str) or not tz:
        raise JourneyError(f"{path}.tz", "must be an IANA time zone name")
    zone(tz, f"{path}.tz")
    entry = _entry(raw.get("entry"), f"{path}.entry")
    match_property = raw.get("match_property")
    if match_property is not None and (not isinstance(match_property, str) or not 0 < len(match_property) <= 120):
        raise JourneyError(f"{path}.match_property", "must be a property name of the entry event")
    nodes = _nodes(raw.get("nodes"), f"{path}.nodes")
    start = raw.get("start")
    if not isinstance(start, str) or start not in nodes:
        raise JourneyError(f"{path}.start", f"{str(start)[:70]!r} is not one of the nodes")
    _check_graph(nodes, start, f"{path}.nodes")
    goal, goal_within = _goal(raw.get("goal"), f"{path}.goal")
    exits_raw = raw.get("exit", [])
    if not isinstance(exits_raw, list) or len(exits_raw) > 20:
        raise JourneyError(f"{path}.exit", "must be a list of at most 20 exit conditions")
    exits: list[EventRule] = []
    exit_on_segment_exit = False
    for i, item in enumerate(exits_raw):
        item_path = f"{path}.exit[{i}]"
        if isinstance(item, dict) and "left_segment" in item:
            no_extra_fields(item, {"left_segment"}, item_path)
            if item["left_segment"] is not True or not isinstance(entry, SegmentEntry):
                raise JourneyError(f"{item_path}.left_segment",
                                   "must be true, and only for a journey entered on a live segment")
            exit_on_segment_exit = True
        else:
            exits.append(_event_rule(item, item_path))
    rules = [(f"{path}.goal", goal)] + [(f"{path}.exit[{i}]", r) for i, r in enumerate(exits)]
    matched = [p for p, rule in rules if rule is not None and rule.match]
    matched += [f"{path}.nodes.{k}" for k, n in nodes.items() if isinstance(n, WaitForEvent) and n.match]
    if matched and (match_property is None or not isinstance(entry, EventEntry)):
        raise JourneyError(matched[0], "'match' needs an event entry and the journey's 'match_property'")
    throttle = parse_throttle(raw.get("throttle_per_minute"), f"{path}.throttle_per_minute")
    messages = [m for n in nodes.values() if isinstance(n, Send) for m in [n.message, *(f.message for f in n.fallback)]]
    return Journey(entry, start, nodes, goal, goal_within, tuple(exits), exit_on_segment_exit,
                   _reentry(raw.get("reentry", "once"), f"{path}.reentry"),
                   parse_percent(raw.get("control_percent", 0), f"{path}.control_percent", 90), tz, match_property,
                   throttle, event_properties(messages))


def _entry(raw: Any, path: str) -> Entry:
    if not isinstance(raw, dict):
        raise JourneyError(path, "must be {'event': E}, {'segment': S} or {'schedule': {...}}")
    if "event" in raw:
        no_extra_fields(raw, {"event", "where"}, path)
        return EventEntry(event_name(raw["event"], f"{path}.event"), parse_where(raw.get("where"), f"{path}.where"))
    if "segment" in raw:
        no_extra_fields(raw, {"segment"}, path)
        return SegmentEntry(_segment_name(raw["segment"], f"{path}.segment"))
    if "schedule" in raw:
        no_extra_fields(raw, {"schedule"}, path)
        sched, sched_path = raw["schedule"], f"{path}.schedule"
        if not isinstance(sched, dict):
            raise JourneyError(sched_path, "must be an object with 'segment', 'at' and optionally 'every'")
        no_extra_fields(sched, {"segment", "at", "every"}, sched_path)
        at = sched.get("at")
        if not isinstance(at, str):
            raise JourneyError(f"{sched_path}.at", "must be an ISO-8601 datetime with an offset")
        every = parse_duration(sched["every"], f"{sched_path}.every") if "every" in sched else None
        if every is not None and every < 3_600_000:
            raise JourneyError(f"{sched_path}.every", "must be at least '1h'")
        return ScheduleEntry(_segment_name(sched.get("segment"), f"{sched_path}.segment"),
                             parse_instant(at, f"{sched_path}.at"), every)
    raise JourneyError(path, "must be {'event': E}, {'segment': S} or {'schedule': {...}}")


def _segment_name(raw: Any, path: str) -> str:
    if not isinstance(raw, str) or not raw or len(raw) > 120:
        raise JourneyError(path, "must be the name of a saved segment")
    return raw


def _nodes(raw: Any, path: str) -> dict[str, Node]:
    if not isinstance(raw, dict) or not raw:
        raise JourneyError(path, "must be an object of node id -> node")
    if len(raw) > MAX_NODES:
        raise JourneyError(path, f"has {len(raw)} nodes; at most {MAX_NODES}")
    nodes: dict[str, Node] = {}
    for node_id, node in raw.items():
        node_path = f"{path}.{node_id}"
        if not NODE_ID.fullmatch(node_id):
            raise JourneyError(node_path, "a node id is 1-64 letters, digits, _ or -")
        nodes[node_id] = _node(node, node_path)
    return nodes


def _next(raw: dict[str, Any], key: str, path: str) -> str | None:
    target = raw.get(key)
    if target is not None and not isinstance(target, str):
        raise JourneyError(f"{path}.{key}", "must be a node id (or absent, to leave the journey)")
    return target


def _wait_ms(raw: Any, path: str) -> int:
    ms = parse_duration(raw, path)
    if ms > MAX_WAIT_MS:
        raise JourneyError(path, "is longer than 366 days")
    return ms


def _channel_message(raw: dict[str, Any], path: str) -> tuple[str, dict[str, Any]]:
    channel = raw.get("channel")
    if channel not in CHANNELS:
        raise JourneyError(f"{path}.channel", f"{str(channel)[:40]!r} is not one of {', '.join(CHANNELS)}")
    message = raw.get("message")
    try:
        # msgpack is how it is stored and sent: it also refuses integers beyond 64 bits.
        size = len(msgspec.msgpack.encode(message)) if isinstance(message, dict) else None
    except (OverflowError, TypeError):
        raise JourneyError(f"{path}.message", "holds a number beyond 64 bits") from None
    if size is None or size > MAX_MESSAGE_BYTES:
        raise JourneyError(f"{path}.message", f"must be an object of at most {MAX_MESSAGE_BYTES} bytes")
    if _depth(message) > MAX_MESSAGE_DEPTH:
        raise JourneyError(f"{path}.message", f"nests deeper than {MAX_MESSAGE_DEPTH} levels")
    check_content(channel, message, f"{path}.message")
    check_message(message, f"{path}.message")
    return channel, message


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value`, without recursing (it may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            if level <= MAX_MESSAGE_DEPTH:
                stack.extend((child, level + 1) for child in children)
    return deepest


def _deliver_within(raw: dict[str, Any], channels: list[str], path: str) -> int:
    if raw.get("deliver_within") is None:
        return 0
    if "push" not in channels[:-1]:
        # Only a push has an arrival receipt (the app reports it); any other channel would
        # always look undelivered and always fall back.
        raise JourneyError(f"{path}.deliver_within", "applies to a push with a fallback channel after it")
    within = parse_duration(raw["deliver_within"], f"{path}.deliver_within")
    if not MIN_DELIVER_WITHIN_MS <= within <= MAX_DELIVER_WITHIN_MS:
        raise JourneyError(f"{path}.deliver_within", "must be from 1m to 3d")
    return within


def parse_send(raw: dict[str, Any], path: str, more_fields: set[str]) -> Send:
    """A message on a channel, with its fallbacks and delivery options: a journey's send
    node, or a campaign's variant (whose fields besides these are `more_fields`)."""
    no_extra_fields(raw, {"channel", "message", "fallback", "quiet_hours", "respect_caps", "deliver_within"}
                    | more_fields, path)
    channel, message = _channel_message(raw, path)
    fallback_raw = raw.get("fallback", [])
    if not isinstance(fallback_raw, list) or len(fallback_raw) > len(CHANNELS) - 1:
        raise JourneyError(f"{path}.fallback", "must be a list of at most 4 {'channel', 'message'} steps")
    fallback = []
    for i, step in enumerate(fallback_raw):
        if not isinstance(step, dict):
            raise JourneyError(f"{path}.fallback[{i}]", "must be an object with 'channel' and 'message'")
        no_extra_fields(step, {"channel", "message"}, f"{path}.fallback[{i}]")
        fallback.append(Fallback(*_channel_message(step, f"{path}.fallback[{i}]")))
    channels = [channel] + [f.channel for f in fallback]
    if len(set(channels)) != len(channels):
        raise JourneyError(f"{path}.fallback", "names a channel twice: each channel is tried once")
    quiet = raw.get("quiet_hours")
    if quiet is not None and quiet not in QUIET_HOURS_MODES:
        raise JourneyError(f"{path}.quiet_hours", f"must be one of {', '.join(QUIET_HOURS_MODES)}")
    respect_caps = raw.get("respect_caps", True)
    if not isinstance(respect_caps, bool):
        raise JourneyError(f"{path}.respect_caps", "must be true or false")
    return Send(channel, message, _next(raw, "next", path), tuple(fallback), quiet, respect_caps,
                _deliver_within(raw, channels, path))


def _node(raw: Any, path: str) -> Node:
    if not isinstance(raw, dict):
        raise JourneyError(path, "must be an object with a 'type'")
    kind = raw.get("type")
    if kind == "send":
        return parse_send(raw, path, {"type", "next"})
    if kind == "wait":
        no_extra_fields(raw, {"type", "duration", "next"}, path)
        return Wait(_wait_ms(raw.get("duration"), f"{path}.duration"), _next(raw, "next", path))
    if kind == "wait_until":
        no_extra_fields(raw, {"type", "time", "next"}, path)
        return WaitUntil(parse_time_of_day(raw.get("time"), f"{path}.time"), _next(raw, "next", path))
    if kind == "wait_for_event":
        no_extra_fields(raw, {"type", "event", "where", "match", "timeout", "on_event", "on_timeout"}, path)
        match_flag = raw.get("match", False)
        if not isinstance(match_flag, bool):
            raise JourneyError(f"{path}.match", "must be true or false")
        return WaitForEvent(event_name(raw.get("event"), f"{path}.event"), parse_where(raw.get("where"), f"{path}.where"),
                            match_flag, _wait_ms(raw.get("timeout"), f"{path}.timeout"),
                            _next(raw, "on_event", path), _next(raw, "on_timeout", path))
    if kind == "branch":
        no_extra_fields(raw, {"type", "condition", "yes", "no"}, path)
        if "condition" not in raw:
            raise JourneyError(f"{path}.condition", "is missing: a segment condition, e.g. {'profile': 'Age', ...}")
        parse_segment(raw["condition"], f"{path}.condition")  # only for its errors: shards parse it again
        return Branch(raw["condition"], _next(raw, "yes", path), _next(raw, "no", path))
    if kind == "split":
        no_extra_fields(raw, {"type", "variants"}, path)
        return Split(_variants(raw.get("variants"), f"{path}.variants"))
    if kind == "exit":
        no_extra_fields(raw, {"type"}, path)
        return Exit()
    raise JourneyError(f"{path}.type", f"{str(kind)[:40]!r} is not one of send, wait, wait_until, wait_for_event,"
                                       " branch, split, exit")


def _variants(raw: Any, path: str) -> tuple[Variant, ...]:
    if not isinstance(raw, list) or not 2 <= len(raw) <= 10:
        raise JourneyError(path, "must be a list of 2 to 10 variants")
    variants, names = [], set()
    for i, item in enumerate(raw):
        item_path = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise JourneyError(item_path, "must be an object with 'name', 'percent' and 'next'")
        no_extra_fields(item, {"name", "percent", "next"}, item_path)
        name = item.get("name")
        if not isinstance(name, str) or not NODE_ID.fullmatch(name) or name in names:
            raise JourneyError(f"{item_path}.name", "must be a distinct name of 1-64 letters, digits, _ or -")
        names.add(name)
        variants.append(Variant(name, parse_percent(item.get("percent"), f"{item_path}.percent", 100),
                                _next(item, "next", item_path)))
    if sum(v.percent for v in variants) != 100:
        raise JourneyError(path, f"percents add up to {sum(v.percent for v in variants)}, not 100")
    return tuple(variants)


def parse_throttle(raw: Any, path: str) -> int | None:
    """Messages a minute from one journey or campaign (None: no limit)."""
    if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 10_000_000):
        raise JourneyError(path, "must be a whole number of messages from 1 to 10000000")
    return raw


def parse_percent(raw: Any, path: str, most: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= most:
        raise JourneyError(path, f"must be a whole percent from 0 to {most}")
    return raw


def _event_rule(raw: Any, path: str) -> EventRule:
    if not isinstance(raw, dict):
        raise JourneyError(path, "must be an object with 'event' (and optionally 'where', 'match')")
    no_extra_fields(raw, {"event", "where", "match"}, path)
    match_flag = raw.get("match", False)
    if not isinstance(match_flag, bool):
        raise JourneyError(f"{path}.match", "must be true or false")
    return EventRule(event_name(raw.get("event"), f"{path}.event"), parse_where(raw.get("where"), f"{path}.where"),
                     match_flag)


def _goal(raw: Any, path: str) -> tuple[EventRule | None, int | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        raise JourneyError(path, "must be an object with 'event' (and optionally 'where', 'match', 'within')")
    within = _wait_ms(raw["within"], f"{path}.within") if "within" in raw else None
    return _event_rule({k: v for k, v in raw.items() if k != "within"}, path), within


def _reentry(raw: Any, path: str) -> Reentry:
    if raw in ("once", "always"):
        return Reentry(raw)
    if isinstance(raw, dict) and set(raw) == {"every"}:
        return Reentry("every", _wait_ms(raw["every"], f"{path}.every"))
    raise JourneyError(path, "must be 'once', 'always' or {'every': '7d'}")


def successors(node: Node) -> list[str | None]:
    if isinstance(node, (Send, Wait, WaitUntil)):
        return [node.next]
    if isinstance(node, WaitForEvent):
        return [node.on_event, node.on_timeout]
    if isinstance(node, Branch):
        return [node.yes, node.no]
    if isinstance(node, Split):
        return [v.next for v in node.variants]
    return []


def _check_graph(nodes: dict[str, Node], start: str, path: str) -> None:
    for node_id, node in nodes.items():
        for target in successors(node):
            if target is not None and target not in nodes:
                raise JourneyError(f"{path}.{node_id}", f"leads to {target[:70]!r}, which is not a node")
    # Depth-first walk from start: a grey node met again is a cycle; unvisited nodes are unreachable.
    state: dict[str, int] = {}
    stack: list[tuple[str, int]] = [(start, 0)]
    while stack:
        node_id, child = stack.pop()
        if child == 0:
            state[node_id] = 1
        targets = [t for t in successors(nodes[node_id]) if t is not None]
        if child < len(targets):
            stack.append((node_id, child + 1))
            target = targets[child]
            if state.get(target) == 1:
                raise JourneyError(f"{path}.{node_id}", f"leads back to {target!r}: a journey must not loop")
            if target not in state:
                stack.append((target, 0))
        else:
            state[node_id] = 2
    unreachable = sorted(set(nodes) - set(state))
    if unreachable:
        raise JourneyError(f"{path}.{unreachable[0]}", "cannot be reached from 'start'")
