"""The campaign definition language: JSON in, a validated `Campaign` out.

    {"audience": {"segment": "Big spenders"},          or {"where": <a segment condition>}
     "message": {"channel": "push", "message": {"title": "Hi {{ profile.Name }}"},
                 "fallback": [{"channel": "email", "message": {...}}]},
     "variants": [{"name": "A", "percent": 50, "channel": ..., "message": ...}, ...],  (instead of message)
     "control_percent": 10,
     "schedule": "now"
                 | {"at": "2026-12-01T09:00:00Z"}
                 | {"local_time": "09:00", "date": "2026-12-01", "if_passed": "next_day" | "drop"}
                 | {"every": "day", "at": "09:00"} | {"every": "week", "on": ["mon", "thu"], "at": "09:00"}
                 | {"cron": "0 9 * * 1-5"}                 (recurring: also "start", "end")
                 | {"trigger": {"event": "Added To Cart", "where": [...]}, "delay": "30m",
                    "per_user": "once" | "always"},
     "conversion_goal": {"event": "Charged", "where": [...], "within": "3d"},
     "respect_caps": true, "quiet_hours": "delay", "throttle_per_minute": 10000, "ttl": "1d",
     "tz": "Europe/Paris"}

A local-time schedule sends at that wall-clock time in each user's own zone (profile
`Tz`, else the campaign's `tz`); a user whose slot had passed when the campaign began
gets it the next day, or not at all, as `if_passed` says. Recurring schedules fire in
the campaign's `tz`. Errors name their path, as the other definition languages' do.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Union

import msgspec
from croniter import CroniterBadDateError, croniter

from kairos.journeys.definition import NODE_ID, Send, parse_percent, parse_send, parse_throttle
from kairos.segments.definition import (
    FIRST_YEAR, LAST_YEAR, PropertyFilter, SegmentError, event_name, no_extra_fields, parse_duration, parse_instant,
    parse_segment, parse_time_of_day, parse_where,
)
from kairos.segments.timing import local_instant, zone
from kairos.templates import event_properties

CampaignError = SegmentError  # one error shape (path + message) for every definition language

MAX_VARIANTS = 10
MAX_CONTROL_PERCENT = 90
MAX_DELAY_MS = 30 * 86_400_000
MAX_GOAL_WINDOW_MS = 90 * 86_400_000
MAX_TTL_MS = 28 * 86_400_000
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's day numbers 0-6
IF_PASSED = ("next_day", "drop")
PER_USER = ("once", "always")
NOW = "now"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_LONG_NUMBER = re.compile(r"\d{3}")  # no cron field counts past 59
# The zone whose clocks are furthest behind (UTC-12): the last to reach a local time.
LATEST_ZONE = "Etc/GMT+12"
# An `at` this far in the past is taken as meaning now (the author's clock, the request's trip).
PAST_GRACE_MS = 5 * 60_000


class Variant(msgspec.Struct, frozen=True):
    name: str
    percent: int
    send: Send


class SendAt(msgspec.Struct, frozen=True):
    """One send at `at_ms` (a campaign saved with `now` holds the instant it was saved)."""

    at_ms: int


class LocalTime(msgspec.Struct, frozen=True):
    """One send on `day` at `at` in each user's own time zone."""

    day: date
    at: time
    if_passed: str  # next_day | drop


class Recurring(msgspec.Struct, frozen=True):
    """A send whenever the cron expression fires in the campaign's zone, from `start_ms`
    until `end_ms` (None: until stopped)."""

    cron: str
    start_ms: int
    end_ms: int | None


class Triggered(msgspec.Struct, frozen=True):
    """A send `delay_ms` after a user does the event (live action)."""

    event: str
    where: tuple[PropertyFilter, ...]
    delay_ms: int
    per_user: str  # once | always


Schedule = Union[SendAt, LocalTime, Recurring, Triggered]


class Goal(msgspec.Struct, frozen=True):
    """A conversion: the user does `event` (matching `where`) within `within_ms` of the send."""

    event: str
    where: tuple[PropertyFilter, ...]
    within_ms: int
    raw_where: tuple[Any, ...] = ()  # as written: the shards' analytics parse it again


class Campaign(msgspec.Struct, frozen=True):
    schedule: Schedule
    variants: tuple[Variant, ...]
    control_percent: int
    tz: str
    audience_segment: str | None = None  # a saved segment's name
    audience_where: Any = None  # an inline segment condition, as written
    goal: Goal | None = None
    throttle_per_minute: int | None = None
    ttl_ms: int | None = None
    # The trigger event's properties the messages' templates read (None: all of them).
    event_properties: frozenset[str] | None = frozenset()

    @property
    def triggered(self) -> bool:
        return isinstance(self.schedule, Triggered)


def parse_campaign(raw: Any, saved_ms: int, path: str = "definition") -> Campaign:
    """The campaign as saved at `saved_ms` (which a `now` schedule means)."""
    if not isinstance(raw, dict):
        raise CampaignError(path, "must be an object with 'schedule', and 'message' or 'variants'")
    no_extra_fields(raw, {"audience", "message", "variants", "control_percent", "schedule", "conversion_goal",
                          "respect_caps", "quiet_hours", "throttle_per_minute", "ttl", "tz"}, path)
    tz = raw.get("tz", "UTC")
    if not isinstance(tz, str) or not tz:
        raise CampaignError(f"{path}.tz", "must be an IANA time zone name")
    zone(tz, f"{path}.tz")
    schedule = _schedule(raw.get("schedule"), saved_ms, tz, f"{path}.schedule")
    segment, where = _audience(raw.get("audience"), schedule, f"{path}.audience")
    defaults = {k: raw[k] for k in ("respect_caps", "quiet_hours") if k in raw}
    variants = _variants(raw, defaults, path)
    throttle = parse_throttle(raw.get("throttle_per_minute"), f"{path}.throttle_per_minute")
    ttl = None
    if raw.get("ttl") is not None:
        ttl = parse_duration(raw["ttl"], f"{path}.ttl")
        if ttl > MAX_TTL_MS:
            raise CampaignError(f"{path}.ttl", "must be at most 28d")
    control = parse_percent(raw.get("control_percent", 0), f"{path}.control_percent", MAX_CONTROL_PERCENT)
    messages = [m for v in variants for m in [v.send.message, *(f.message for f in v.send.fallback)]]
    reads = event_properties(messages)
    if not isinstance(schedule, Triggered) and reads != frozenset():
        raise CampaignError(f"{path}.message", "reads {{ event }}, but only a triggered campaign has an event")
    return Campaign(schedule, variants, control, tz, segment, where, _goal(raw.get("conversion_goal"),
                    f"{path}.conversion_goal"), throttle, ttl, reads)


def _variants(raw: dict[str, Any], defaults: dict[str, Any], path: str) -> tuple[Variant, ...]:
    if ("message" in raw) == ("variants" in raw):
        raise CampaignError(f"{path}.message", "give either 'message' (one message) or 'variants' (an A/B test)")
    if "message" in raw:
        message = raw["message"]
        if not isinstance(message, dict):
            raise CampaignError(f"{path}.message", "must be an object with 'channel' and 'message'")
        return (Variant("A", 100, parse_send({**defaults, **message}, f"{path}.message", set())),)
    items = raw["variants"]
    if not isinstance(items, list) or not 2 <= len(items) <= MAX_VARIANTS:
        raise CampaignError(f"{path}.variants", f"must be a list of 2 to {MAX_VARIANTS} variants")
    variants: list[Variant] = []
    for i, item in enumerate(items):
        item_path = f"{path}.variants[{i}]"
        if not isinstance(item, dict):
            raise CampaignError(item_path, "must be an object with 'name', 'percent', 'channel' and 'message'")
        name = item.get("name")
        if not isinstance(name, str) or not NODE_ID.fullmatch(name) or name == "control" \
                or name in {v.name for v in variants}:
            raise CampaignError(f"{item_path}.name", "must be a distinct name of 1-64 letters, digits, _ or - "
                                                     "(not 'control')")
        percent = parse_percent(item.get("percent"), f"{item_path}.percent", 100)
        body = {k: v for k, v in item.items() if k not in ("name", "percent")}
        variants.append(Variant(name, percent, parse_send({**defaults, **body}, item_path, set())))
    if sum(v.percent for v in variants) != 100:
        raise CampaignError(f"{path}.variants", f"percents add up to {sum(v.percent for v in variants)}, not 100")
    return tuple(variants)


def _audience(raw: Any, schedule: Schedule, path: str) -> tuple[str | None, Any]:
    if isinstance(schedule, Triggered):
        if raw is not None:
            raise CampaignError(path, "a triggered campaign reaches whoever does its event: filter with the"
                                      " trigger's 'where' instead")
        return None, None
    if not isinstance(raw, dict) or len(raw) != 1 or not {"segment", "where"} & raw.keys():
        raise CampaignError(path, "must be {'segment': <a saved segment's name>} or {'where': <a condition>}")
    if "segment" in raw:
        name = raw["segment"]
        if not isinstance(name, str) or not 0 < len(name) <= 120:
            raise CampaignError(f"{path}.segment", "must be the name of a saved segment")
        return name, None
    parse_segment(raw["where"], f"{path}.where")  # for its errors: shards parse it again
    return None, raw["where"]


def _schedule(raw: Any, saved_ms: int, tz: str, path: str) -> Schedule:
    if raw == NOW:
        return SendAt(saved_ms)
    if not isinstance(raw, dict):
        raise CampaignError(path, "must be 'now', {'at'}, {'local_time', 'date'}, {'every'}, {'cron'} or {'trigger'}")
    if "trigger" in raw:
        no_extra_fields(raw, {"trigger", "delay", "per_user"}, path)
        trigger = raw["trigger"]
        if not isinstance(trigger, dict):
            raise CampaignError(f"{path}.trigger", "must be an object with 'event' (and optionally 'where')")
        no_extra_fields(trigger, {"event", "where"}, f"{path}.trigger")
        delay = parse_duration(raw["delay"], f"{path}.delay", allow_zero=True) if "delay" in raw else 0
        if delay > MAX_DELAY_MS:
            raise CampaignError(f"{path}.delay", "must be at most 30d")
        per_user = raw.get("per_user", "always")
        if per_user not in PER_USER:
            raise CampaignError(f"{path}.per_user", f"must be one of {', '.join(PER_USER)}")
        return Triggered(event_name(trigger.get("event"), f"{path}.trigger.event"),
                         parse_where(trigger.get("where"), f"{path}.trigger.where"), delay, per_user)
    if "local_time" in raw:
        no_extra_fields(raw, {"local_time", "date", "if_passed"}, path)
        day = raw.get("date")
        try:
            parsed_day = date.fromisoformat(day) if isinstance(day, str) and _DATE.fullmatch(day) else None
        except ValueError:
            parsed_day = None
        if parsed_day is None or not FIRST_YEAR <= parsed_day.year <= LAST_YEAR:
            raise CampaignError(f"{path}.date", f"must be a date such as '2026-12-01', in the years {FIRST_YEAR}"
                                                f"-{LAST_YEAR}")
        if_passed = raw.get("if_passed", "next_day")
        if if_passed not in IF_PASSED:
            raise CampaignError(f"{path}.if_passed", f"must be one of {', '.join(IF_PASSED)}")
        local = LocalTime(parsed_day, parse_time_of_day(raw.get("local_time"), f"{path}.local_time"), if_passed)
        # The last zone on earth (UTC-12) reaches the slot last, the next day's too.
        last = local_instant(parsed_day + timedelta(days=1 if if_passed == "next_day" else 0), local.at,
                             zone(LATEST_ZONE))
        if last < saved_ms:
            raise CampaignError(f"{path}.date", "has passed in every time zone: no one would get the message")
        return local
    if "every" in raw or "cron" in raw:
        return _recurring(raw, saved_ms, path)
    if "at" in raw:
        no_extra_fields(raw, {"at"}, path)
        if raw["at"] == NOW:
            return SendAt(saved_ms)
        if not isinstance(raw["at"], str):
            raise CampaignError(f"{path}.at", "must be 'now' or an ISO-8601 datetime with an offset")
        at_ms = parse_instant(raw["at"], f"{path}.at")
        if at_ms < saved_ms - PAST_GRACE_MS:
            raise CampaignError(f"{path}.at", "is in the past: give a later time, or 'now'")
        return SendAt(at_ms)
    raise CampaignError(path, "must be 'now', {'at'}, {'local_time', 'date'}, {'every'}, {'cron'} or {'trigger'}")


def _recurring(raw: dict[str, Any], saved_ms: int, path: str) -> Recurring:
    if "cron" in raw:
        no_extra_fields(raw, {"cron", "start", "end"}, path)
        cron = raw["cron"]
        # Five fields: cron's own minute resolution (croniter would take a sixth, seconds).
        if not isinstance(cron, str) or len(cron.split()) != 5 or _LONG_NUMBER.search(cron) \
                or not croniter.is_valid(cron):
            raise CampaignError(f"{path}.cron", "must be a cron expression of five fields, e.g. '0 9 * * 1-5'")
    else:
        no_extra_fields(raw, {"every", "at", "on", "start", "end"}, path)
        at = parse_time_of_day(raw.get("at"), f"{path}.at")
        if raw["every"] == "day":
            if "on" in raw:
                raise CampaignError(f"{path}.on", "is for 'every': 'week'")
            days = "*"
        elif raw["every"] == "week":
            on = raw.get("on")
            if not isinstance(on, list) or not on or not all(d in WEEKDAYS for d in on):
                raise CampaignError(f"{path}.on", f"must list days of the week: {', '.join(WEEKDAYS)}")
            days = ",".join(str(WEEKDAYS.index(d)) for d in sorted(set(on), key=WEEKDAYS.index))
        else:
            raise CampaignError(f"{path}.every", "must be 'day' or 'week' (or use 'cron')")
        cron = f"{at.minute} {at.hour} * * {days}"
    start = _instant(raw.get("start"), f"{path}.start") if raw.get("start") is not None else saved_ms
    end = _instant(raw.get("end"), f"{path}.end") if raw.get("end") is not None else None
    if end is not None and end <= start:
        raise CampaignError(f"{path}.end", "must be after 'start'")
    try:
        # A valid expression may still never fire ('0 9 30 2 *': February 30th).
        base = datetime.fromtimestamp(max(start, saved_ms) // 1000, timezone.utc)
        croniter(cron, base).get_next(datetime)
    except (CroniterBadDateError, ValueError, OverflowError):
        raise CampaignError(f"{path}.cron" if "cron" in raw else path, "never fires") from None
    return Recurring(cron, start, end)


def _instant(raw: Any, path: str) -> int:
    if not isinstance(raw, str):
        raise CampaignError(path, "must be an ISO-8601 datetime with an offset")
    return parse_instant(raw, path)


def _goal(raw: Any, path: str) -> Goal | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise CampaignError(path, "must be an object with 'event', 'within' and optionally 'where'")
    no_extra_fields(raw, {"event", "where", "within"}, path)
    if "within" not in raw:
        raise CampaignError(f"{path}.within", "is missing: how long after the send a conversion counts, e.g. '3d'")
    within = parse_duration(raw["within"], f"{path}.within")
    if within > MAX_GOAL_WINDOW_MS:
        raise CampaignError(f"{path}.within", "must be at most 90d")
    where = parse_where(raw.get("where"), f"{path}.where")
    return Goal(event_name(raw.get("event"), f"{path}.event"), where, within, tuple(raw.get("where") or ()))

