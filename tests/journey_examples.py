"""Journeys the unit and the integration tests both run."""

from __future__ import annotations

from typing import Any

# Enter on Added To Cart; no Charged of the same cart within an hour: push; still none a
# day later: email a coupon. Buying that cart is the goal.
ABANDONED_CART: dict[str, Any] = {
    "entry": {"event": "Added To Cart"},
    "match_property": "CartId",
    "start": "wait_charge",
    "nodes": {
        "wait_charge": {"type": "wait_for_event", "event": "Charged", "match": True, "timeout": "1h",
                        "on_timeout": "push"},
        "push": {"type": "send", "channel": "push", "message": {"title": "Still thinking?"}, "next": "wait_day"},
        "wait_day": {"type": "wait_for_event", "event": "Charged", "match": True, "timeout": "1d",
                     "on_timeout": "email"},
        "email": {"type": "send", "channel": "email", "message": {"subject": "10% off", "text": "Use SAVE10 at checkout"}},
    },
    "goal": {"event": "Charged", "match": True},
    "reentry": "always",
}
