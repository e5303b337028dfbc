"""Each account's providers, built from its delivery settings and rebuilt when they
change. The router asks for them every round, so settings are cached for a few seconds:
a changed credential takes effect within `SETTINGS_TTL_S`."""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis

from kairos import keys
from kairos.channels.base import Provider
from kairos.channels.in_app import InAppProvider
from kairos.routing.settings import NO_SETTINGS, PROVIDERS, DeliverySettings, parse_delivery_settings
from kairos.segments.definition import SegmentError

logger = logging.getLogger(__name__)
SETTINGS_TTL_S = 5.0


class _Account(msgspec.Struct):
    raw: bytes | None
    settings: DeliverySettings
    providers: dict[str, Provider]
    fetched: float


class AccountProviders:
    def __init__(self, client: aioredis.Redis, in_app: InAppProvider, ttl_s: float = SETTINGS_TTL_S) -> None:
        self._redis = client
        self._in_app = in_app
        self._ttl_s = ttl_s
        self._accounts: dict[str, _Account] = {}

    async def _account(self, account: str) -> _Account:
        known = self._accounts.get(account)
        if known is not None and time.monotonic() - known.fetched < self._ttl_s:
            return known
        raw = await self._redis.get(keys.delivery_settings(account))
        if known is not None and known.raw == raw:
            known.fetched = time.monotonic()
            return known
        if known is not None:
            await self._close(known.providers)
        fresh = _Account(raw, self._parse(account, raw), {}, time.monotonic())
        self._accounts[account] = fresh
        return fresh

    @staticmethod
    def _parse(account: str, raw: bytes | None) -> DeliverySettings:
        if raw is None:
            return NO_SETTINGS
        try:
            return parse_delivery_settings(msgspec.json.decode(raw))
        except (SegmentError, msgspec.DecodeError) as exc:
            # Checked when saved; this is a value written around the API. Deliver nothing
            # through it rather than guess.
            logger.error("account %s has unusable delivery settings: %s", account, exc)
            return NO_SETTINGS

    async def settings(self, account: str) -> DeliverySettings:
        return (await self._account(account)).settings

    async def provider(self, account: str, channel: str) -> Provider | None:
        if channel == "in_app":
            return self._in_app
        state = await self._account(account)
        provider = state.providers.get(channel)
        if provider is None and channel in state.settings.providers:
            name, config = state.settings.providers[channel]
            provider = state.providers[channel] = PROVIDERS[channel][name][1](config)
        return provider

    @staticmethod
    async def _close(providers: dict[str, Any]) -> None:
        for provider in providers.values():
            try:
                await provider.close()
            except Exception:
                logger.exception("closing a provider failed")

    async def close(self) -> None:
        for state in self._accounts.values():
            await self._close(state.providers)
        self._accounts.clear()
