"""What journeys keep and exchange: saved journeys, a user's position in one, the
triggers shards forward, and the send requests handed to the channel router."""

from __future__ import annotations

from typing import Any

import msgspec

from kairos.models import Trigger

ACTIVE, PAUSED = "active", "paused"
# Shards and journey actors re-read the catalog this often, in case a refresh missed them.
CATALOG_RESYNC_S = 30.0
# A position's phase: its node is to run next, or it waits inside its node.
READY, WAITING = 0, 1


class SavedJourney(msgspec.Struct):
    """A journey and every version it was saved with: users in flight stay on the
    version they entered, so old versions stay until no one can be on them."""

    name: str
    version: int
    status: str  # active | paused
    definitions: dict[int, Any]  # version -> the JSON its author saved
    description: str = ""
    created_ms: int = 0
    updated_ms: int = 0


class Position(msgspec.Struct, array_like=True, gc=False):
    """One user's place in one journey. `phase` 0: `node` is to run next (now, or on
    resume if the journey is paused); 1: waiting inside `node` until `due_ms` (or an
    event). Node "$goal" holds a user who finished but may still convert."""

    version: int
    node: str
    phase: int
    due_ms: int
    entered_ms: int
    seq: int  # the user's entry number in this journey: keeps send ids unique
    key: Any = None  # the entry event's value of the journey's match property
    variant: str | None = None
    control: bool = False
    # The entry event's properties that the journey's messages personalise with.
    event: dict[str, Any] | None = None


GOAL_NODE = "$goal"


class SegmentSignalIn(msgspec.Struct, array_like=True, gc=False):
    account: str
    segment: str
    user: str
    entered: bool


class SendRequest(msgspec.Struct, omit_defaults=True):
    """A message to deliver. `id` is stable across retries and restarts: the router
    delivers each id once. `journey` names the source: a journey, or (with
    `source_kind` "campaign") a campaign."""

    id: str
    account: str
    user: str
    channel: str
    message: dict[str, Any]
    journey: str
    version: int
    node: str
    at_ms: int
    variant: str | None = None
    fallback: list[tuple[str, dict[str, Any]]] = []  # (channel, message), tried in order
    quiet_hours: str | None = None  # drop | delay | ignore; None: the account's setting
    respect_caps: bool = True
    throttle_per_minute: int | None = None
    event: dict[str, Any] = {}  # the triggering event's properties, for templates
    source_kind: str = "journey"
    deliver_within_ms: int = 0  # a push not reported arriving this long after falls back (0: never)
    expires_ms: int = 0  # not sent after this (a campaign's ttl); 0: no limit


trigger_list_encoder = msgspec.msgpack.Encoder()
trigger_list_decoder = msgspec.msgpack.Decoder(list[Trigger])
position_decoder = msgspec.msgpack.Decoder(Position)
saved_journey_decoder = msgspec.msgpack.Decoder(SavedJourney)
send_decoder = msgspec.msgpack.Decoder(SendRequest)
