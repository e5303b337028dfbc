"""A campaign's decisions, with no I/O: when its runs fall, when each user's message is
due, who is held out or gets which variant, and the send request that carries it.

A run is one send of the campaign to its audience, named by its key (epoch ms): the
instant it starts. Every decision here is a pure function of the saved campaign and
the user, so a scheduler that restarts part-way through a run makes the same ones again.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

from croniter import CroniterBadDateError, croniter

from kairos.campaigns.definition import Campaign, LocalTime, Recurring, SendAt
from kairos.journeys.model import SendRequest
from kairos.segments.timing import local_instant, zone, zone_or

CONTROL = "control"
SOURCE_KIND = "campaign"
# The zone whose clocks are furthest ahead (Kiribati, UTC+14): a local-time run starts
# when its time comes there, the first place on earth it does.
EARLIEST_ZONE = "Pacific/Kiritimati"
# A recurring run that could not start within this long of its time is skipped.
RECURRING_LATE_MS = 3 * 3_600_000


def _bucket(*parts: str) -> int:
    """A stable number in [0, 10000) (basis points): the same in every process."""
    return zlib.crc32("\x00".join(parts).encode()) % 10_000


def assign(campaign_id: int, campaign: Campaign, user: str) -> str:
    """The user's variant, or CONTROL: stable for the campaign's whole life (every run of
    a recurring campaign, every trigger), so results compare the same groups."""
    cid = str(campaign_id)
    if campaign.control_percent and _bucket("control", cid, user) < campaign.control_percent * 100:
        return CONTROL
    point = _bucket("variant", cid, user)
    floor = 0
    for variant in campaign.variants:
        floor += variant.percent * 100
        if point < floor:
            return variant.name
    return campaign.variants[-1].name


def latest_run(campaign: Campaign, created_ms: int, now_ms: int) -> int | None:
    """The key of the latest run due at or before `now_ms` (runs missed while no scheduler
    ran collapse into the latest, if it is not too late); None if none is due yet, or
    ever (triggered)."""
    schedule = campaign.schedule
    if isinstance(schedule, SendAt):
        return schedule.at_ms if now_ms >= schedule.at_ms else None
    if isinstance(schedule, LocalTime):
        start = local_run_start(schedule, created_ms)
        return start if now_ms >= start else None
    if isinstance(schedule, Recurring):
        until = now_ms if schedule.end_ms is None else min(now_ms, schedule.end_ms - 1)
        if until < schedule.start_ms:
            return None
        tz = zone(campaign.tz)
        # A second past `until`, so a run due exactly now is found; croniter fires on whole seconds.
        base = datetime.fromtimestamp(until // 1000 + 1, timezone.utc).astimezone(tz)
        try:
            fired = int(croniter(schedule.cron, base).get_prev(datetime).timestamp() * 1000)
        except (CroniterBadDateError, OverflowError):
            return None  # no run at all (at the edges of what dates can hold)
        # Not a run from before the campaign existed, nor one so late it would surprise
        # (a scheduler down over 09:00 sends the 09:00 run at 10:00, not at midnight).
        if fired < max(schedule.start_ms, created_ms) or now_ms - fired > RECURRING_LATE_MS:
            return None
        return fired if fired <= until else None
    return None


def latest_run_holding(campaign: Campaign, created_ms: int, now_ms: int) -> tuple[int | None, int | None]:
    """`latest_run` at `now_ms`, and until when (exclusive) it stays the same: None for
    ever. A scheduler asks every step about every campaign; with this it asks croniter
    only when the answer changes: at the next run, or when the latest becomes too late."""
    latest = latest_run(campaign, created_ms, now_ms)
    schedule = campaign.schedule
    if isinstance(schedule, (SendAt, LocalTime)):
        return latest, None if latest is not None else next_run(campaign, created_ms, now_ms)
    if isinstance(schedule, Recurring):
        changes = [t for t in (next_run(campaign, created_ms, now_ms),
                               None if latest is None else latest + RECURRING_LATE_MS + 1) if t is not None]
        return latest, min(changes) if changes else None
    return latest, None


def next_run(campaign: Campaign, created_ms: int, after_ms: int) -> int | None:
    """When the first run after `after_ms` falls (for display); None if there is none."""
    schedule = campaign.schedule
    if isinstance(schedule, (SendAt, LocalTime)):
        key = schedule.at_ms if isinstance(schedule, SendAt) else local_run_start(schedule, created_ms)
        return key if key > after_ms else None
    if isinstance(schedule, Recurring):
        base_ms = max(after_ms, schedule.start_ms - 1)
        base = datetime.fromtimestamp(base_ms // 1000, timezone.utc).astimezone(zone(campaign.tz))
        try:
            fired = int(croniter(schedule.cron, base).get_next(datetime).timestamp() * 1000)
        except (CroniterBadDateError, OverflowError):
            return None
        return fired if schedule.end_ms is None or fired < schedule.end_ms else None
    return None


def local_run_start(schedule: LocalTime, created_ms: int) -> int:
    """A local-time run starts when its slot comes in the earliest zone (or at once, if
    the campaign was saved after that)."""
    return max(created_ms, local_instant(schedule.day, schedule.at, zone(EARLIEST_ZONE)))


def local_slot(schedule: LocalTime, run_ms: int, user_tz: str | None, campaign_tz: str) -> int | None:
    """When the user's message is due: the slot in their zone; if it had passed when the
    run started, the next day's slot or none, as the campaign chose."""
    tz = zone_or(user_tz, campaign_tz)
    slot = local_instant(schedule.day, schedule.at, tz)
    if slot >= run_ms:
        return slot
    if schedule.if_passed == "drop":
        return None
    following = local_instant(schedule.day + timedelta(days=1), schedule.at, tz)
    return following if following >= run_ms else None


def send_id(campaign_id: int, run_ms: int, user: str) -> str:
    return f"campaign:{campaign_id}:{run_ms}:{user}"


def triggered_send_id(campaign_id: int, inbox_id: str, index: int) -> str:
    """Names the message for one trigger event: its inbox entry and place in it."""
    return f"campaign:{campaign_id}:t:{inbox_id}:{index}"


def send_request(account: str, campaign_id: int, campaign: Campaign, variant: str, user: str, request_id: str,
                 due_ms: int, event: dict[str, Any] | None = None) -> SendRequest:
    chosen = next(v for v in campaign.variants if v.name == variant)
    send = chosen.send
    kept = event or {}
    if campaign.event_properties is not None:
        kept = {k: v for k, v in kept.items() if k in campaign.event_properties}
    return SendRequest(
        request_id, account, user, send.channel, send.message, str(campaign_id), 0, variant, due_ms,
        variant=variant, fallback=[(f.channel, f.message) for f in send.fallback], quiet_hours=send.quiet_hours,
        respect_caps=send.respect_caps, throttle_per_minute=campaign.throttle_per_minute, event=kept,
        source_kind=SOURCE_KIND, deliver_within_ms=send.deliver_within_ms,
        expires_ms=due_ms + campaign.ttl_ms if campaign.ttl_ms else 0)

