"""Delivery policy for the channel router: quiet hours and frequency caps (issue #6)."""
