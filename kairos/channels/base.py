"""What every delivery provider is: one small protocol, so the router does not care
whether a message leaves through FCM, SES, SMTP, SNS, a webhook or the in-app inbox.

A provider sends one rendered message to one address and says how it went:
- DELIVERED: the provider accepted it (its own message id in `provider_id`);
- REJECTED: it never will (bad address, unregistered token, refused content): the
  router falls back to the next channel, and drops the address if `unreachable`;
- TRANSIENT: it may later (timeout, throttling, 5xx, connection refused): the router
  retries with backoff, then falls back.
A provider never raises for a delivery problem; it raises only for a bug. It never
blocks the event loop: blocking SDKs run in a worker thread, and every call has a
timeout.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec

DELIVERED, REJECTED, TRANSIENT = "delivered", "rejected", "transient"
# Every provider call gives up after this long unless its settings say otherwise.
DEFAULT_TIMEOUT_S = 10.0


class Delivery(msgspec.Struct, frozen=True):
    send_id: str  # stable across retries: providers that take an idempotency key get it
    account: str
    user: str
    channel: str
    address: str  # push token, email address, phone number (E.164), webhook URL or user key
    message: dict[str, Any]  # rendered: every template already filled in


class Outcome(msgspec.Struct, frozen=True):
    status: str  # DELIVERED | REJECTED | TRANSIENT
    detail: str = ""  # why, in the provider's words, for the dead-letter list and stats
    provider_id: str | None = None
    unreachable: bool = False  # the address is dead for good: remove it from the profile
    # The provider's acceptance is the delivery itself (the inbox stored it, the webhook
    # receiver answered 2xx), not a hand-over to a service that delivers later.
    final: bool = False
    # The provider will report on the message later, under `provider_id` (SES's delivery,
    # bounce and complaint events): the router notes which send that id is.
    reports_later: bool = False


class Provider(Protocol):
    channel: str

    async def send(self, delivery: Delivery) -> Outcome: ...

    async def close(self) -> None: ...


@runtime_checkable
class BatchProvider(Provider, Protocol):
    """A provider that takes many deliveries in one call (FCM's send_each, the inbox's
    pipelined write): one outcome per delivery, in order."""

    async def send_many(self, deliveries: list[Delivery]) -> list[Outcome]: ...


def delivered(provider_id: str | None = None, final: bool = False) -> Outcome:
    return Outcome(DELIVERED, provider_id=provider_id, final=final)


def rejected(detail: str, unreachable: bool = False) -> Outcome:
    return Outcome(REJECTED, detail[:500], unreachable=unreachable)


def transient(detail: str) -> Outcome:
    return Outcome(TRANSIENT, detail[:500])
