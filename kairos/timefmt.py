"""CleverTap's date formats: YYYYMMDD query bounds and YYYYMMDDHHMMSS timestamps (UTC)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


class DateError(ValueError):
    pass


def yyyymmdd_to_ms(value: object, field: str) -> int:
    """Start of that day in UTC, as epoch milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DateError(f"{field} must be a date as YYYYMMDD, got {value!r}")
    text = str(value)
    if len(text) != 8 or not (text.isascii() and text.isdigit()):
        raise DateError(f"{field} must be a date as YYYYMMDD, got {value!r}")
    try:
        day = datetime.strptime(text, "%Y%m%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise DateError(f"{field} must be a date as YYYYMMDD, got {value!r}") from None
    return int(day.timestamp() * 1000)


def day_range_ms(from_value: object, to_value: object) -> tuple[int, int]:
    """[from 00:00, to+1 00:00): CleverTap's `to` day is inclusive."""
    start = yyyymmdd_to_ms(from_value, "from")
    end = yyyymmdd_to_ms(to_value, "to") + int(timedelta(days=1).total_seconds() * 1000)
    if end <= start:
        raise DateError(f"'to' ({to_value}) is before 'from' ({from_value})")
    return start, end


def ms_to_clevertap_ts(ms: int) -> int:
    return int(datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y%m%d%H%M%S"))


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as an ISO-8601 UTC instant, e.g. 2026-11-24T09:00:00Z."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def clevertap_minute_to_ms(text: str, field: str) -> int:
    """CleverTap's `YYYYMMDD HH:MM` (UTC) as epoch milliseconds."""
    try:
        moment = datetime.strptime(text, "%Y%m%d %H:%M").replace(tzinfo=timezone.utc)
    except (ValueError, TypeError):
        raise DateError(f"{field} must be 'now' or a time as 'YYYYMMDD HH:MM', got {str(text)[:40]!r}") from None
    return int(moment.timestamp() * 1000)
