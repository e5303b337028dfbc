"""What to do with one send request now, for one user: the router's decisions, with no
I/O (the router fetches the profile and history, and carries the plan out).

A request past its `expires_ms` (a campaign's ttl) is dropped; one whose `at_ms` is still
ahead waits for it.
Channels are tried in order (the request's channel, then its fallbacks). A channel is
skipped when the user opted out of it (CleverTap's `MSG-push`, `MSG-email`, `MSG-sms`,
`MSG-whatsapp` flags) or has no address on it (no push token, email or phone). On the
first channel that remains: quiet hours (drop, or delay to the window's end), then
frequency caps (drop, as CleverTap does), then the templates are rendered; a render
failure fails the message (never half a message).
"""

from __future__ import annotations

from typing import Any, Mapping

import msgspec

from kairos.journeys.model import SendRequest
from kairos.routing.caps import Sent, allowed_from
from kairos.routing.settings import DeliverySettings
from kairos.templates import RenderError, render_message

# Profile properties that hold each channel's address.
PUSH_TOKEN, EMAIL, PHONE = "Push Token", "Email", "Phone"
ADDRESS_PROPERTY = {"push": PUSH_TOKEN, "email": EMAIL, "sms": PHONE}
# CleverTap's opt-out flags; `MSG-push-all` turns off every push, `MSG-push` marketing push
# (Kairos sends no other kind, so either one stops a push).
CONSENT_FLAGS = {"push": ("MSG-push", "MSG-push-all"), "email": ("MSG-email",), "sms": ("MSG-sms",),
                 "whatsapp": ("MSG-whatsapp",)}
# Do-not-disturb is for messages that interrupt: not for a webhook, nor for an in-app
# message, which shows only while the user is in the app anyway.
QUIET_CHANNELS = frozenset({"push", "sms", "email", "whatsapp"})
_OFF = frozenset({"false", "no", "n", "0", "off"})

# A request due this little ahead goes now: the clocks of the machines that made it
# and that send it may differ by that much.
SCHEDULED_SLACK_MS = 1000

# What a plan says.
SEND, DELAY, DROP, FAIL = "send", "delay", "drop", "fail"


class Plan(msgspec.Struct, frozen=True):
    action: str  # SEND | DELAY | DROP | FAIL
    channel_index: int = 0  # which of the request's channels (0: its own, 1+: fallbacks)
    channel: str = ""
    address: str = ""
    message: dict[str, Any] = {}
    until_ms: int = 0  # DELAY: when to look again
    reason: str = ""  # DROP / FAIL / DELAY: why, as counted in stats


def channels_of(request: SendRequest) -> list[tuple[str, dict[str, Any]]]:
    return [(request.channel, request.message), *request.fallback]


def opted_out(profile: Mapping[str, Any], channel: str) -> bool:
    for flag in CONSENT_FLAGS.get(channel, ()):
        value = profile.get(flag)
        if value is False or (isinstance(value, str) and value.strip().lower() in _OFF):
            return True
    return False


def address_of(profile: Mapping[str, Any], channel: str, user: str) -> str | None:
    prop = ADDRESS_PROPERTY.get(channel)
    if prop is None:
        return user  # webhook and in-app reach the user by their key
    value = profile.get(prop)
    return value if isinstance(value, str) and value else None


def plan(request: SendRequest, first_channel: int, profile: Mapping[str, Any] | None, history: list[Sent],
         settings: DeliverySettings, now_ms: int) -> Plan:
    """The plan for `request`, trying its channels from `first_channel` on."""
    if request.expires_ms and now_ms > request.expires_ms:
        return Plan(DROP, first_channel, request.channel, reason="expired")
    if request.at_ms > now_ms + SCHEDULED_SLACK_MS:
        # A campaign's message queued ahead of its time (a triggered campaign's delay).
        return Plan(DELAY, first_channel, request.channel, until_ms=request.at_ms, reason="scheduled")
    if profile is None:
        return Plan(DROP, reason="no_profile")
    channels = channels_of(request)
    skipped: list[str] = []
    for index in range(first_channel, len(channels)):
        channel, template = channels[index]
        if opted_out(profile, channel):
            skipped.append(f"{channel}: opted out")
            continue
        if channel != "in_app" and channel not in settings.providers:
            skipped.append(f"{channel}: no provider configured")
            continue
        address = address_of(profile, channel, request.user)
        if address is None:
            skipped.append(f"{channel}: no {ADDRESS_PROPERTY[channel]}")
            continue
        mode = request.quiet_hours or (settings.quiet.action if settings.quiet else "ignore")
        if settings.quiet is not None and mode != "ignore" and channel in QUIET_CHANNELS:
            tz = profile.get("Tz")
            ends = settings.quiet.hours.end_of_window(now_ms, tz if isinstance(tz, str) else None,
                                                      settings.default_tz)
            if ends is not None:
                if mode == "drop":
                    return Plan(DROP, index, channel, reason="quiet_hours")
                return Plan(DELAY, index, channel, until_ms=ends, reason="quiet_hours")
        if request.respect_caps and settings.caps:
            if allowed_from(settings.caps, history, channel, request.source_kind, request.journey, now_ms) is not None:
                return Plan(DROP, index, channel, reason="capped")
        try:
            rendered = render_message(template, profile, request.event)
        except RenderError as exc:
            return Plan(FAIL, index, channel, reason=f"render: {exc}")
        return Plan(SEND, index, channel, address, rendered)
    return Plan(FAIL, first_channel, reason=("unreachable: " + "; ".join(skipped)) if skipped else "no channel left")
