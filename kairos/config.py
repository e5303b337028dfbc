"""Typed, validated settings: every tunable is read here and nowhere else.

Each setting comes from an environment variable `KAIROS_<NAME>` (or a CLI flag
that overrides it). A bad value raises `ConfigError` naming the variable, so an
operator never has to guess which of thirty knobs is wrong.
"""

from __future__ import annotations

import math
import re
import os
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import msgspec

ENV_PREFIX = "KAIROS_"


class ConfigError(ValueError):
    """A setting has a value Kairos cannot run with."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Where the embedded Redis keeps its append-only file and where runtime state lives.
    data_dir: str = ".kairos"
    # An external Redis; when empty, `kairos up` starts an embedded redis-server.
    redis_url: str = ""
    # `always`: Redis fsyncs before it answers, so an acknowledged event survives power
    # loss. Shards group-commit, so this is one fsync per flush, not per upload; the
    # benchmark shows no measurable cost. `everysec` can lose up to a second on power loss.
    redis_fsync: str = "always"
    # A Ray cluster to join (Ray's own RAY_ADDRESS, or `--address`); empty starts Ray.
    ray_address: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    # Where users' mail clients and apps reach the gateway (open and click tracking links,
    # e.g. https://t.example.com); empty: http://<host>:<port>, which only works locally.
    public_url: str = ""
    # Where SNS's signing certificates and subscription confirmations may come from (a
    # regular expression matched at the start of the URL), for SES events; see
    # kairos.channels.sns_messages.
    sns_url_pattern: str = r"https://sns\.[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+\.amazonaws\.com(\.cn)?/"
    # Fixed for the life of a deployment: it decides which partition owns a user.
    partitions: int = 16
    shards: int = 2
    # One ingest actor coalesces best on a small machine; a cluster raises it.
    ingest_actors: int = 1
    gateway_processes: int = 1
    # Upload requests a gateway process admits at once, over all accounts; beyond this it
    # answers 429 instead of queueing, which keeps memory bounded under overload.
    max_inflight_uploads: int = 64
    # CleverTap allows 15 concurrent upload requests per account.
    max_inflight_uploads_per_account: int = 15
    max_body_bytes: int = 8 * 1024 * 1024
    # Open in-app inbox streams (server-sent events) a gateway process serves; each holds
    # a Redis connection, so beyond this a new one gets 503.
    max_inbox_streams: int = 1000
    # Uploads (or shard batches) that may share one coalesced actor call.
    max_uploads_per_call: int = 64
    # A partition is snapshotted once this many records arrived since its last snapshot,
    # after which its stream is trimmed.
    snapshot_every_records: int = 200_000
    snapshot_interval_s: float = 300.0
    # Record ids (`messageId`) remembered per partition for dedupe of client retries.
    dedupe_window_records: int = 200_000
    # A request whose actors have not answered by then gets 503.
    request_timeout_s: float = 30.0
    # How long a verified passcode is trusted before the slow hash is checked again.
    auth_cache_s: float = 60.0
    # How often each ingest actor finishes merges left pending by a coordinator that died.
    merge_sweep_interval_s: float = 5.0
    # How often shards re-evaluate live-segment members whose time window may have moved.
    live_segment_tick_s: float = 1.0
    # `system`, or `manual`: journeys' time moves only when advanced (tests, demos of
    # long journeys); see kairos.journeys.clock.
    clock: str = "system"

    def __post_init__(self) -> None:
        positive = (
            "port", "partitions", "shards", "ingest_actors", "gateway_processes",
            "max_inflight_uploads", "max_inflight_uploads_per_account", "max_body_bytes", "max_uploads_per_call",
            "max_inbox_streams",
            "snapshot_every_records", "dedupe_window_records",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be > 0, got {getattr(self, name)!r}")
        if self.port > 65535:
            raise ConfigError(f"{ENV_PREFIX}PORT must be <= 65535, got {self.port}")
        if self.shards > self.partitions:
            raise ConfigError(
                f"{ENV_PREFIX}SHARDS ({self.shards}) must not exceed {ENV_PREFIX}PARTITIONS "
                f"({self.partitions}): a shard owns at least one partition"
            )
        if self.clock not in ("system", "manual"):
            raise ConfigError(f"{ENV_PREFIX}CLOCK must be 'system' or 'manual', got {self.clock!r}")
        if self.redis_fsync not in ("always", "everysec"):
            raise ConfigError(f"{ENV_PREFIX}REDIS_FSYNC must be 'always' or 'everysec', got {self.redis_fsync!r}")
        for name in ("snapshot_interval_s", "auth_cache_s", "request_timeout_s", "merge_sweep_interval_s",
                     "live_segment_tick_s"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be a finite number, got {getattr(self, name)!r}")
        if self.snapshot_interval_s <= 0 or self.auth_cache_s < 0 or self.request_timeout_s <= 0:
            raise ConfigError(f"{ENV_PREFIX}SNAPSHOT_INTERVAL_S must be > 0, {ENV_PREFIX}REQUEST_TIMEOUT_S > 0 and {ENV_PREFIX}AUTH_CACHE_S >= 0")
        parts = urlsplit(self.public_url)
        if self.public_url and (parts.scheme not in ("http", "https") or not parts.netloc or parts.query
                                or parts.fragment or len(self.public_url) > 200):
            raise ConfigError(f"{ENV_PREFIX}PUBLIC_URL must be an http:// or https:// URL without query "
                              f"(at most 200 characters), got {self.public_url[:80]!r}")
        try:
            re.compile(self.sns_url_pattern)
        except re.error as exc:
            raise ConfigError(f"{ENV_PREFIX}SNS_URL_PATTERN is not a regular expression: {exc}") from None
        if self.merge_sweep_interval_s <= 0:
            raise ConfigError(f"{ENV_PREFIX}MERGE_SWEEP_INTERVAL_S must be > 0, got {self.merge_sweep_interval_s!r}")
        if self.live_segment_tick_s <= 0:
            raise ConfigError(f"{ENV_PREFIX}LIVE_SEGMENT_TICK_S must be > 0, got {self.live_segment_tick_s!r}")

    @property
    def public_base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def replace(self, **changes: Any) -> "Settings":
        return msgspec.structs.replace(self, **changes)


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from `KAIROS_*` variables, then explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    for field in msgspec.structs.fields(Settings):
        var = ENV_PREFIX + field.name.upper()
        if var in env:
            raw[field.name] = _parse(var, env[var], field.type)
    if env.get("RAY_ADDRESS"):
        raw["ray_address"] = env["RAY_ADDRESS"]
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None


def _parse(var: str, text: str, kind: Any) -> Any:
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{var} must be a {kind.__name__}, got {text!r}") from None
    return text
