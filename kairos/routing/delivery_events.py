"""The system events that report a message's fate in its user's event stream
(`Notification Sent`, `Delivered`, `Failed`, `Viewed`, `Clicked`, and `Held Out` for a
campaign's control group, who are sent nothing), built in one place so
the router and the tracking endpoints describe a message the same way, and segments,
journey waits and goals can filter on the same properties."""

from __future__ import annotations

from typing import Any

import msgspec

from kairos.models import EventRecord

SENT, DELIVERED, FAILED = "Notification Sent", "Notification Delivered", "Notification Failed"
VIEWED, CLICKED = "Notification Viewed", "Notification Clicked"
HELD_OUT = "Notification Held Out"


class SentMessage(msgspec.Struct, array_like=True, frozen=True):
    """One message as it reached one user: what its events say about it."""

    account: str
    identifier: str  # one of the user's identifiers: ingest resolves it back to them
    send_id: str
    channel: str
    source_kind: str  # journey | campaign
    source: str
    node: str
    variant: str | None = None


def notification_event(sent: SentMessage, name: str, at_ms: int, extra: dict[str, Any] | None = None,
                       id_suffix: str = "") -> EventRecord:
    props: dict[str, Any] = {"Channel": sent.channel, "Send Id": sent.send_id, "Node": sent.node,
                             sent.source_kind.capitalize(): sent.source}
    if sent.variant is not None:
        props["Variant"] = sent.variant
    props.update(extra or {})
    # The id makes a replayed event count once (ingest dedupes by messageId).
    return EventRecord(sent.identifier, at_ms, name, props, f"kairos|{sent.send_id}|{name}{id_suffix}")
