"""Campaigns: one message (or a few A/B variants) to an audience, now, later, on a schedule or on an event."""
