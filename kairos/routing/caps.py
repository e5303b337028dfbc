"""Frequency caps: how many messages a user may get, and how close together.

Rules, checked against the user's recent sends (the channel router keeps them):

    {"channel": "push", "max": 3, "within": "7d"}      at most 3 pushes in any 7 days
    {"max": 5, "within": "1d"}                          at most 5 messages a day, all channels
    {"channel": "push", "min_gap": "4h"}                 4 hours between two pushes
    {"per": "journey", "max": 2, "within": "1d"}        at most 2 a day from any one journey
    {"per": "campaign", "max": 1, "within": "1d"}       (likewise per campaign)

A message is allowed when every rule allows it. When one does not, the answer says
from when on it would be (the router then drops or delays the message).
"""

from __future__ import annotations

from typing import Any

import msgspec

from kairos.segments.definition import SegmentError, no_extra_fields, parse_duration

CHANNELS = ("push", "email", "sms", "webhook", "in_app", "whatsapp")
SOURCES = ("journey", "campaign")
MAX_RULES = 50
NEVER = 2**62  # what a cap of 0 answers: not on this channel (or from this source) at all


class CapRule(msgspec.Struct, frozen=True):
    channel: str | None = None  # None: every channel
    per: str | None = None  # "journey" / "campaign": counted for each one apart
    max: int | None = None
    within_ms: int | None = None
    min_gap_ms: int | None = None


class Sent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One message the user got: when, on which channel, from which journey or campaign."""

    at_ms: int
    channel: str
    source_kind: str  # "journey" or "campaign"
    source: str


def parse_rules(raw: Any, path: str = "caps") -> tuple[CapRule, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_RULES:
        raise SegmentError(path, f"must be a list of at most {MAX_RULES} cap rules")
    return tuple(_rule(item, f"{path}[{i}]") for i, item in enumerate(raw))


def _rule(raw: Any, path: str) -> CapRule:
    if not isinstance(raw, dict):
        raise SegmentError(path, "must be an object such as {'channel': 'push', 'max': 3, 'within': '7d'}")
    no_extra_fields(raw, {"channel", "per", "max", "within", "min_gap"}, path)
    channel = raw.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise SegmentError(f"{path}.channel", f"{str(channel)[:40]!r} is not one of {', '.join(CHANNELS)}")
    per = raw.get("per")
    if per is not None and per not in SOURCES:
        raise SegmentError(f"{path}.per", f"{str(per)[:40]!r} is not one of {', '.join(SOURCES)}")
    if "min_gap" in raw:
        if "max" in raw or "within" in raw:
            raise SegmentError(path, "a rule is either 'min_gap', or 'max' with 'within'")
        return CapRule(channel, per, min_gap_ms=parse_duration(raw["min_gap"], f"{path}.min_gap"))
    most = raw.get("max")
    if isinstance(most, bool) or not isinstance(most, int) or not 0 <= most <= 10_000:
        raise SegmentError(f"{path}.max", "must be a whole number of messages from 0 to 10000")
    if "within" not in raw:
        raise SegmentError(f"{path}.within", "is missing: the window the count is taken over, e.g. '7d'")
    return CapRule(channel, per, most, parse_duration(raw["within"], f"{path}.within"))


def horizon_ms(rules: tuple[CapRule, ...]) -> int:
    """How far back sends matter to these rules: older ones can be forgotten."""
    return max((r.within_ms or r.min_gap_ms or 0 for r in rules), default=0)


def allowed_from(rules: tuple[CapRule, ...], history: list[Sent], channel: str, source_kind: str, source: str,
                 now_ms: int) -> int | None:
    """None when a message on `channel` from `source` may go now; else the first instant
    from which every rule would let it (given the sends in `history`, oldest first)."""
    latest = now_ms
    for rule in rules:
        if (rule.channel is not None and rule.channel != channel) or (rule.per is not None and rule.per != source_kind):
            continue
        relevant = [s for s in history if (rule.channel is None or s.channel == channel)
                    and (rule.per is None or (s.source_kind == source_kind and s.source == source))]
        if rule.min_gap_ms is not None:
            if relevant:
                latest = max(latest, relevant[-1].at_ms + rule.min_gap_ms)
            continue
        assert rule.max is not None and rule.within_ms is not None
        if rule.max == 0:
            return NEVER
        recent = [s for s in relevant if s.at_ms > now_ms - rule.within_ms]
        if len(recent) >= rule.max:
            # The window must slide past the oldest of them until fewer than `max` remain.
            latest = max(latest, recent[len(recent) - rule.max].at_ms + rule.within_ms)
    return None if latest <= now_ms else latest


