"""An account's delivery settings: its providers and credentials, frequency caps, quiet
hours and retry policy. Saved as the JSON its owner PUT (`/api/settings/delivery`),
checked here on save, read by the channel routers.

    {"providers": {"push": {"provider": "fcm", "project_id": "...", "service_account": {...}},
                   "email": {"provider": "ses", "from_address": "hi@example.com", ...},
                   "sms": {"provider": "sns", ...},
                   "webhook": {"provider": "webhook", "url": "https://...", "secret": "..."}},
     "caps": [{"channel": "push", "max": 3, "within": "7d"}, {"min_gap": "1h"}],
     "quiet_hours": {"start": "22:00", "end": "08:00", "action": "delay"},
     "default_tz": "UTC",
     "retry": {"max_attempts": 5, "fallback_after": "10m"},
     "tracking": {"opens": true, "clicks": true, "base_url": "https://t.example.com"}}

In-app messages need no provider: they go to the user's inbox in Kairos itself.
Secrets (and webhook header values) are never read back: GET shows them as MASK, and a
PUT that sends MASK back keeps the stored value, so a settings page can round-trip what
it was shown.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

import msgspec

from kairos.channels import fcm, ses, smtp, sns, webhook
from kairos.journeys.definition import parse_throttle
from kairos.routing.caps import CapRule, parse_rules
from kairos.routing.quiet_hours import QuietHours
from kairos.segments.definition import SegmentError, no_extra_fields, parse_duration
from kairos.segments.timing import zone

MASK = "********"
SECRET_FIELDS = frozenset({"service_account", "secret_access_key", "password", "secret"})
HEADERS = "headers"  # a webhook's extra headers: their values are treated as secrets
QUIET_ACTIONS = ("drop", "delay")
MAX_SETTINGS_BYTES = 64 * 1024

# channel -> provider name -> (parse its settings, build the provider from them)
PROVIDERS: dict[str, dict[str, tuple[Callable[[Any, str], Any], Callable[[Any], Any]]]] = {
    "push": {"fcm": (fcm.parse_settings, fcm.FcmProvider)},
    "email": {"ses": (ses.parse_settings, ses.SesProvider), "smtp": (smtp.parse_settings, smtp.SmtpProvider)},
    "sms": {"sns": (sns.parse_settings, sns.SnsProvider)},
    "webhook": {"webhook": (webhook.parse_settings, webhook.WebhookProvider)},
}


class QuietWindow(msgspec.Struct, frozen=True):
    hours: QuietHours
    action: str  # drop | delay


DEFAULT_ATTEMPTS = 5
DEFAULT_FALLBACK_AFTER_MS = 600_000


class RetryPolicy(msgspec.Struct, frozen=True):
    max_attempts: int = DEFAULT_ATTEMPTS
    # Transient failures are retried this long at most before the next channel is tried.
    fallback_after_ms: int = DEFAULT_FALLBACK_AFTER_MS
    first_backoff_ms: int = 2_000
    max_backoff_ms: int = 300_000


class TrackingSettings(msgspec.Struct, frozen=True):
    """Open and click tracking of email and in-app messages (kairos.routing.tracking)."""

    opens: bool = True
    clicks: bool = True
    # Where users' mail clients reach the gateway's /t/ endpoints (a tracking domain);
    # None: the deployment's public URL.
    base_url: str | None = None


class DeliverySettings(msgspec.Struct, frozen=True):
    providers: dict[str, tuple[str, Any]]  # channel -> (provider name, its parsed settings)
    caps: tuple[CapRule, ...] = ()
    quiet: QuietWindow | None = None
    default_tz: str = "UTC"
    retry: RetryPolicy = RetryPolicy()
    tracking: TrackingSettings = TrackingSettings()


NO_SETTINGS = DeliverySettings({})


def parse_delivery_settings(raw: Any, path: str = "settings") -> DeliverySettings:
    if not isinstance(raw, dict):
        raise SegmentError(path, "must be an object")
    no_extra_fields(raw, {"providers", "caps", "quiet_hours", "default_tz", "retry", "tracking",
                          "campaign_throttle_per_minute"}, path)
    providers: dict[str, tuple[str, Any]] = {}
    raw_providers = raw.get("providers", {})
    if not isinstance(raw_providers, dict):
        raise SegmentError(f"{path}.providers", "must be an object of channel -> provider settings")
    for channel, config in raw_providers.items():
        at = f"{path}.providers.{channel}"
        if channel not in PROVIDERS:
            raise SegmentError(at, f"is not a channel with providers (one of {', '.join(PROVIDERS)})")
        name = config.get("provider") if isinstance(config, dict) else None
        if not isinstance(name, str) or name not in PROVIDERS[channel]:
            raise SegmentError(f"{at}.provider", f"must be one of {', '.join(PROVIDERS[channel])}")
        providers[channel] = (name, PROVIDERS[channel][name][0](config, at))
    quiet = None
    if raw.get("quiet_hours") is not None:
        quiet = _quiet(raw["quiet_hours"], f"{path}.quiet_hours")
    default_tz = raw.get("default_tz", "UTC")
    if not isinstance(default_tz, str):
        raise SegmentError(f"{path}.default_tz", "must be an IANA time zone name")
    zone(default_tz, f"{path}.default_tz")
    # Read (from the stored JSON) when CleverTap's targets API creates a campaign.
    parse_throttle(raw.get("campaign_throttle_per_minute"), f"{path}.campaign_throttle_per_minute")
    return DeliverySettings(providers, parse_rules(raw.get("caps", []), f"{path}.caps"), quiet, default_tz,
                            _retry(raw.get("retry", {}), f"{path}.retry"),
                            _tracking(raw.get("tracking", {}), f"{path}.tracking"))


def _quiet(raw: Any, path: str) -> QuietWindow:
    if not isinstance(raw, dict):
        raise SegmentError(path, "must be {'start': 'HH:MM', 'end': 'HH:MM', 'action': 'drop' or 'delay'}")
    no_extra_fields(raw, {"start", "end", "action"}, path)
    action = raw.get("action", "delay")
    if action not in QUIET_ACTIONS:
        raise SegmentError(f"{path}.action", "must be 'drop' or 'delay'")
    return QuietWindow(QuietHours.parse(raw.get("start"), raw.get("end"), path), action)


def _retry(raw: Any, path: str) -> RetryPolicy:
    if not isinstance(raw, dict):
        raise SegmentError(path, "must be {'max_attempts': N, 'fallback_after': '10m'}")
    no_extra_fields(raw, {"max_attempts", "fallback_after"}, path)
    attempts = raw.get("max_attempts", DEFAULT_ATTEMPTS)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 20:
        raise SegmentError(f"{path}.max_attempts", "must be a whole number from 1 to 20")
    fallback_after = DEFAULT_FALLBACK_AFTER_MS
    if "fallback_after" in raw:
        fallback_after = parse_duration(raw["fallback_after"], f"{path}.fallback_after")
        if fallback_after > 86_400_000:
            raise SegmentError(f"{path}.fallback_after", "must be at most 1d")
    return RetryPolicy(attempts, fallback_after)


def _tracking(raw: Any, path: str) -> TrackingSettings:
    if not isinstance(raw, dict):
        raise SegmentError(path, "must be {'opens': true, 'clicks': true, 'base_url': 'https://...'}")
    no_extra_fields(raw, {"opens", "clicks", "base_url"}, path)
    for flag in ("opens", "clicks"):
        if not isinstance(raw.get(flag, True), bool):
            raise SegmentError(f"{path}.{flag}", "must be true or false")
    base_url = raw.get("base_url")
    if base_url is not None and not (isinstance(base_url, str) and check_base_url(base_url)):
        raise SegmentError(f"{path}.base_url", "must be an http:// or https:// URL without query, at most 200 characters")
    return TrackingSettings(raw.get("opens", True), raw.get("clicks", True), base_url)


def check_base_url(url: str) -> bool:
    """Whether `url` can prefix the tracking paths: http(s), a host, no query or fragment."""
    parts = urlsplit(url)
    return (len(url) <= 200 and parts.scheme in ("http", "https") and bool(parts.netloc)
            and not parts.query and not parts.fragment and url.isascii() and " " not in url)


def masked(raw: dict[str, Any]) -> dict[str, Any]:
    """The settings as GET shows them: every secret, and every webhook header's value (an
    API key, often), replaced by MASK."""
    out = dict(raw)
    providers = raw.get("providers")
    if isinstance(providers, dict):
        out["providers"] = {channel: _masked_provider(config) if isinstance(config, dict) else config
                            for channel, config in providers.items()}
    return out


def _masked_provider(config: dict[str, Any]) -> dict[str, Any]:
    out = {k: (MASK if k in SECRET_FIELDS else v) for k, v in config.items()}
    if isinstance(config.get(HEADERS), dict):
        out[HEADERS] = {name: MASK for name in config[HEADERS]}
    return out


def unmasked(new: dict[str, Any], stored: dict[str, Any] | None, path: str = "settings") -> dict[str, Any]:
    """`new` with each MASK put back to the stored secret of the same channel and provider;
    SegmentError for a MASK with no stored secret behind it (it would be saved as the
    secret itself)."""
    providers = new.get("providers")
    old_providers = (stored or {}).get("providers") or {}
    if not isinstance(providers, dict):
        return new
    restored: dict[str, Any] = {}
    for channel, config in providers.items():
        old = old_providers.get(channel)
        if isinstance(config, dict):
            same = isinstance(old, dict) and old.get("provider") == config.get("provider")
            config = _unmasked_provider(config, old if same else {}, f"{path}.providers.{channel}")
        restored[channel] = config
    return {**new, "providers": restored}


def _unmasked_provider(config: dict[str, Any], old: dict[str, Any], path: str) -> dict[str, Any]:
    out = dict(config)
    for key in SECRET_FIELDS & set(config):
        if config[key] == MASK:
            if key not in old:
                raise SegmentError(f"{path}.{key}", f"is {MASK!r} but no secret is stored for it: send the secret")
            out[key] = old[key]
    headers = config.get(HEADERS)
    if isinstance(headers, dict):
        old_headers = old.get(HEADERS) if isinstance(old.get(HEADERS), dict) else {}
        for name, value in headers.items():
            if value == MASK and name not in old_headers:
                raise SegmentError(f"{path}.{HEADERS}.{name}", f"is {MASK!r} but no value is stored for it")
        out[HEADERS] = {name: (old_headers[name] if value == MASK else value) for name, value in headers.items()}
    return out
