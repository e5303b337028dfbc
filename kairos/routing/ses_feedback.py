"""What an SES event about a sent email means for its user.

- Delivery: the receiving server took the mail: `Notification Delivered`.
- Bounce: `Notification Failed` with the reason. A permanent (hard) bounce also removes
  the address from the profile (only while it is still the one that bounced), so no
  later message goes to it, as CleverTap and Braze do.
- Complaint (marked as spam): the user is unsubscribed from email (`MSG-email` false).
- Reject, Rendering Failure: `Notification Failed`.
Other SES events (Send, Open, Click, DeliveryDelay) add nothing: Kairos counts the
hand-over and tracks opens and clicks itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kairos.channels.ses import SEND_ID_TAG
from kairos.models import ProfileRecord, Record
from kairos.routing import delivery_events as events
from kairos.routing.plan import EMAIL
from kairos.routing.tracking import TrackedLink

# Counted in the delivery stats, per channel and source, like the router's outcomes.
DELIVERED, BOUNCED, SOFT_BOUNCED, COMPLAINED, FAILED = "delivered", "bounced", "soft_bounced", "complained", "failed"


class SesEvent(ValueError):
    """An SES event record without the fields its type needs."""


def _object(raw: Any, name: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SesEvent(f"{name} must be an object")
    return raw


def _at_ms(section: dict[str, Any], default_ms: int) -> int:
    stamp = section.get("timestamp")
    if not isinstance(stamp, str):
        return default_ms
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
    except (ValueError, OverflowError):
        return default_ms


def sent_at_ms(event: dict[str, Any], default_ms: int) -> int:
    """When SES took the mail."""
    return _at_ms(_object(event.get("mail"), "mail"), default_ms)


def sent_by_kairos(event: dict[str, Any]) -> bool:
    """The mail carries Kairos's send id tag (SES copies tags into its events)."""
    tags = _object(event.get("mail"), "mail").get("tags")
    return isinstance(tags, dict) and SEND_ID_TAG in tags


def message_id(event: dict[str, Any]) -> str:
    """SES's id of the mail the event is about."""
    found = _object(event.get("mail"), "mail").get("messageId")
    if not isinstance(found, str) or not found:
        raise SesEvent("mail.messageId must be a non-empty string")
    return found


def records(event: dict[str, Any], link: TrackedLink, now_ms: int) -> tuple[list[Record], str | None]:
    """The records the event adds to its user's stream and profile, and what it counts as
    (None: nothing)."""
    kind = event.get("eventType", event.get("notificationType"))
    sent = link.sent
    if kind == "Delivery":
        delivery = _object(event.get("delivery"), "delivery")
        return [events.notification_event(sent, events.DELIVERED, _at_ms(delivery, now_ms))], DELIVERED
    if kind == "Bounce":
        bounce = _object(event.get("bounce"), "bounce")
        hard = bounce.get("bounceType") == "Permanent"
        recipients = bounce.get("bouncedRecipients")
        diagnosis = "; ".join(str(r.get("diagnosticCode") or r.get("status") or "")
                              for r in (recipients if isinstance(recipients, list) else []) if isinstance(r, dict))
        reason = f"bounce: {bounce.get('bounceType')}/{bounce.get('bounceSubType')}" + (f": {diagnosis}" if diagnosis else "")
        at_ms = _at_ms(bounce, now_ms)
        found: list[Record] = [events.notification_event(sent, events.FAILED, at_ms, {"Reason": reason[:500]})]
        address = _sent_to(event)
        if hard and address is not None:
            found.append(ProfileRecord(sent.identifier, at_ms, {}, None, f"kairos|{sent.send_id}|bounced",
                                       unset_if={EMAIL: address}))
        return found, BOUNCED if hard else SOFT_BOUNCED
    if kind == "Complaint":
        complaint = _object(event.get("complaint"), "complaint")
        if complaint.get("complaintFeedbackType") == "not-spam":
            return [], None  # the reader said it is not spam: no reason to unsubscribe them
        return [ProfileRecord(sent.identifier, _at_ms(complaint, now_ms), {"MSG-email": False}, None,
                              f"kairos|{sent.send_id}|complained")], COMPLAINED
    if kind in ("Reject", "Rendering Failure"):
        section = _object(event.get("reject") or event.get("failure") or {}, "reject")
        reason = str(section.get("reason") or section.get("errorMessage") or kind)
        return [events.notification_event(sent, events.FAILED, now_ms, {"Reason": f"{kind}: {reason}"[:500]})], FAILED
    return [], None


def _sent_to(event: dict[str, Any]) -> str | None:
    destination = _object(event.get("mail"), "mail").get("destination")
    if isinstance(destination, list) and destination and isinstance(destination[0], str):
        return destination[0]
    return None
