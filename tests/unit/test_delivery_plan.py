"""The router's per-user decision (kairos.routing.plan), without I/O: consent, address,
quiet hours, caps and rendering, each deciding the channel or moving to the next."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec
import pytest

from kairos.journeys.model import SendRequest
from kairos.routing import plan as planning
from kairos.routing.caps import Sent
from kairos.routing.settings import parse_delivery_settings

pytestmark = pytest.mark.timeout(30)

NOON = int(datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc).timestamp() * 1000)
PROVIDERS = {"sms": {"provider": "sns", "region": "eu-west-1"},
             "email": {"provider": "smtp", "host": "smtp.example.com", "from_address": "shop@example.com"}}
PUSH = {"title": "Hi {{ profile.Name | default: 'there' }}"}
SMS = {"text": "Your {{ event.Product }} is waiting"}
EMAIL = {"subject": "Hi", "text": "Hello {{ profile.Name }}"}


def request(**changes: Any) -> SendRequest:
    fields: dict[str, Any] = dict(id="s-1", account="acc", user="identity:ann", channel="push", message=PUSH,
                                  journey="welcome", version=1, node="n", at_ms=NOON, event={"Product": "hat"},
                                  fallback=[("sms", SMS), ("email", EMAIL)])
    return SendRequest(**{**fields, **changes})


def decide(profile: dict[str, Any] | None, history: list[Sent] | None = None, now: int = NOON,
           req: SendRequest | None = None, **settings: Any) -> planning.Plan:
    parsed = parse_delivery_settings({"providers": PROVIDERS, **settings})
    # FCM settings need a real service-account key; the plan only asks whether push has a provider.
    parsed = msgspec.structs.replace(parsed, providers={**parsed.providers, "push": ("fcm", None)})
    return planning.plan(req or request(), 0, profile, history or [], parsed, now)


ANN = {"Name": "Ann", "Push Token": "tok", "Phone": "+14155550100", "Email": "ann@example.org"}


def test_the_first_reachable_channel_is_rendered_and_sent() -> None:
    decision = decide(ANN)
    assert (decision.action, decision.channel, decision.address, decision.message) == (
        planning.SEND, "push", "tok", {"title": "Hi Ann"})


@pytest.mark.parametrize(("flags", "channel"), [
    ({"MSG-push": False}, "sms"),
    ({"MSG-push-all": "false"}, "sms"),
    ({"MSG-push": " No "}, "sms"),
    ({"MSG-push": "off", "MSG-sms": 0}, "sms"),  # a number is not an opt-out answer
    ({"MSG-push": "n", "MSG-sms": "0"}, "email"),
    ({"MSG-push": True, "MSG-push-all": "yes"}, "push"),
])
def test_consent_flags_skip_a_channel(flags: dict[str, Any], channel: str) -> None:
    assert decide({**ANN, **flags}).channel == channel


def test_no_address_moves_on_and_nothing_left_fails_naming_why() -> None:
    assert decide({"Name": "Ann", "Email": "ann@example.org"}).channel == "email"
    decision = decide({"Name": "Ann", "MSG-email": False})
    assert decision.action == planning.FAIL
    assert decision.reason == "unreachable: push: no Push Token; sms: no Phone; email: opted out"
    assert decide(None).action == planning.DROP and decide(None).reason == "no_profile"


def test_quiet_hours_in_the_users_zone_drop_or_delay_to_the_windows_end() -> None:
    quiet = {"start": "22:00", "end": "08:00"}
    tokyo = {**ANN, "Tz": "Asia/Tokyo"}  # 21:00 there: not quiet yet
    assert decide(tokyo, quiet_hours={**quiet, "action": "delay"}).action == planning.SEND
    auckland = {**ANN, "Tz": "Pacific/Auckland"}  # 01:00 there
    delayed = decide(auckland, quiet_hours={**quiet, "action": "delay"})
    assert delayed.action == planning.DELAY and delayed.until_ms == NOON + 7 * 3_600_000
    assert decide(auckland, quiet_hours={**quiet, "action": "drop"}).reason == "quiet_hours"
    # The message's own choice wins over the account's.
    assert decide(auckland, req=request(quiet_hours="ignore"), quiet_hours=quiet).action == planning.SEND


def test_caps_drop_and_a_request_may_ignore_them() -> None:
    history = [Sent(NOON - 3_600_000, "push", "journey", "other")]
    caps = [{"channel": "push", "min_gap": "2h"}]
    assert decide(ANN, history, caps=caps).reason == "capped"
    assert decide(ANN, history, caps=caps, req=request(respect_caps=False)).action == planning.SEND


def test_a_template_that_cannot_render_fails_the_message() -> None:
    decision = decide({"Phone": "+14155550100"}, req=request(channel="sms", message={"text": "{{ profile.Name }}"},
                                                             fallback=[]))
    assert decision.action == planning.FAIL and decision.reason.startswith("render:")


def test_a_message_waits_for_its_time_and_is_dropped_past_its_expiry() -> None:
    later = decide(ANN, req=request(at_ms=NOON + 3_600_000))
    assert (later.action, later.until_ms, later.reason) == (planning.DELAY, NOON + 3_600_000, "scheduled")
    expired = decide(ANN, req=request(at_ms=NOON - 7_200_000, expires_ms=NOON - 1))
    assert (expired.action, expired.reason) == (planning.DROP, "expired")
    assert decide(ANN, req=request(expires_ms=NOON)).action == planning.SEND
