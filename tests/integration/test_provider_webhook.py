"""The webhook provider over real HTTP against a local receiver that checks signatures."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from kairos.channels.base import DELIVERED, REJECTED, TRANSIENT, Delivery
from kairos.channels.webhook import SIGNATURE_HEADER, WebhookProvider, WebhookSettings, verify
from tests.loopback.webhook_receiver import ThreadedWebhookReceiver, WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

SECRET = "whsec-integration-0123"
MESSAGE = {"title": "Your cart misses you", "body": "Ann, the watch is still there", "data": {"sku": "W-1", "n": 2}}


def delivery(send_id: str = "send-1") -> Delivery:
    # The address is deliberately elsewhere: the provider must only ever use the settings URL.
    return Delivery(send_id, "acme", "user-7", "webhook", "http://203.0.113.9/attacker", MESSAGE)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(SECRET) as running:
        yield running


@pytest_asyncio.fixture
async def provider(receiver: WebhookReceiver) -> AsyncIterator[WebhookProvider]:
    webhook = WebhookProvider(WebhookSettings(receiver.url, SECRET, timeout_s=2.0))
    try:
        yield webhook
    finally:
        await webhook.close()


@pytest.fixture
def refusing_port() -> Iterator[int]:
    # Bound but never listening: connections are refused, and no other test can take the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_a_delivery_arrives_signed_with_the_json_body(receiver: WebhookReceiver, provider: WebhookProvider) -> None:
    before_ms = time.time_ns() // 1_000_000
    outcome = await provider.send(delivery())
    assert outcome.status == DELIVERED and outcome.provider_id == "rcv-1"
    [call] = receiver.calls
    assert verify(SECRET, call.headers[SIGNATURE_HEADER], call.body, time.time())
    assert call.delivery_id == "send-1" and call.headers["Content-Type"] == "application/json"
    sent_at = call.json.pop("sent_at")
    assert call.json == {"id": "send-1", "account": "acme", "user": "user-7", "channel": "webhook", "message": MESSAGE}
    assert before_ms <= sent_at <= time.time_ns() // 1_000_000
    signed_at = int(call.headers[SIGNATURE_HEADER].split(",")[0].removeprefix("t="))
    assert signed_at == sent_at // 1000


async def test_retries_of_one_send_carry_the_same_delivery_id(receiver: WebhookReceiver, provider: WebhookProvider) -> None:
    receiver.fail_next(1, 503)
    assert (await provider.send(delivery("send-9"))).status == TRANSIENT
    assert (await provider.send(delivery("send-9"))).status == DELIVERED
    assert [call.delivery_id for call in receiver.calls] == ["send-9", "send-9"]
    assert [call.status for call in receiver.calls] == [503, 200]


async def test_a_wrong_secret_is_refused_by_the_receiver(receiver: WebhookReceiver) -> None:
    impostor = WebhookProvider(WebhookSettings(receiver.url, "not-the-shared-secret"))
    try:
        outcome = await impostor.send(delivery())
    finally:
        await impostor.close()
    assert outcome.status == REJECTED and "401" in outcome.detail
    assert receiver.calls == [] and receiver.refused == 1


@pytest.mark.parametrize("status", [500, 502, 503, 408, 425, 429])
async def test_server_errors_and_throttling_are_transient(receiver: WebhookReceiver, provider: WebhookProvider,
                                                          status: int) -> None:
    receiver.fail_next(1, status, body="try again later")
    outcome = await provider.send(delivery())
    assert outcome.status == TRANSIENT and outcome.detail == f"HTTP {status}: try again later"


async def test_throttling_passes_retry_after_into_the_detail(receiver: WebhookReceiver, provider: WebhookProvider) -> None:
    receiver.fail_next(1, 429, headers={"Retry-After": "30"})
    outcome = await provider.send(delivery())
    assert outcome.status == TRANSIENT and "Retry-After: 30" in outcome.detail


@pytest.mark.parametrize("status", [400, 404, 410, 422])
async def test_other_client_errors_are_rejected_with_status_and_body(receiver: WebhookReceiver,
                                                                     provider: WebhookProvider, status: int) -> None:
    receiver.fail_next(1, status, body="no such hook " + "x" * 5000)
    outcome = await provider.send(delivery())
    assert outcome.status == REJECTED and not outcome.unreachable
    assert outcome.detail.startswith(f"HTTP {status}: no such hook xxx")
    assert len(outcome.detail) == len(f"HTTP {status}: ") + 200


async def test_a_redirect_is_not_followed_but_rejected(receiver: WebhookReceiver, provider: WebhookProvider) -> None:
    receiver.fail_next(1, 307, headers={"Location": receiver.url})
    outcome = await provider.send(delivery())
    assert outcome.status == REJECTED and "redirect" in outcome.detail and "not followed" in outcome.detail
    assert len(receiver.calls) == 1  # had it followed, the receiver would have seen a second call


async def test_a_slow_receiver_times_out_as_transient(receiver: WebhookReceiver) -> None:
    receiver.slow(10.0, count=1)
    impatient = WebhookProvider(WebhookSettings(receiver.url, SECRET, timeout_s=0.3))
    try:
        started = time.monotonic()
        outcome = await impatient.send(delivery())
        assert time.monotonic() - started < 3
        assert outcome.status == TRANSIENT and "0.3s" in outcome.detail
        # The same session still works once the receiver is fast again.
        assert (await impatient.send(delivery("send-2"))).status == DELIVERED
    finally:
        await impatient.close()


async def test_connection_refused_is_transient(refusing_port: int) -> None:
    nobody = WebhookProvider(WebhookSettings(f"http://127.0.0.1:{refusing_port}/hook", SECRET, timeout_s=2.0))
    try:
        outcome = await nobody.send(delivery())
    finally:
        await nobody.close()
    assert outcome.status == TRANSIENT and "cannot connect" in outcome.detail


async def test_an_unresolvable_host_is_transient() -> None:
    # .invalid never resolves (RFC 6761), so this needs no network.
    lost = WebhookProvider(WebhookSettings("http://hooks.kairos.invalid/x", SECRET, timeout_s=5.0))
    try:
        outcome = await lost.send(delivery())
    finally:
        await lost.close()
    assert outcome.status == TRANSIENT and "cannot connect" in outcome.detail


async def test_an_unencodable_message_is_rejected_without_a_request(receiver: WebhookReceiver,
                                                                    provider: WebhookProvider) -> None:
    broken = Delivery("send-1", "acme", "user-7", "webhook", "", {"title": object()})
    outcome = await provider.send(broken)
    assert outcome.status == REJECTED and "JSON" in outcome.detail and receiver.calls == []


async def test_extra_static_headers_are_sent(receiver: WebhookReceiver) -> None:
    keyed = WebhookProvider(WebhookSettings(receiver.url, SECRET, headers={"X-Api-Key": "k-123", "X-Tenant": "acme"}))
    try:
        assert (await keyed.send(delivery())).status == DELIVERED
    finally:
        await keyed.close()
    [call] = receiver.calls
    assert call.headers["x-api-key"] == "k-123" and call.headers["X-Tenant"] == "acme"


async def test_concurrent_sends_share_one_session_and_all_arrive(receiver: WebhookReceiver,
                                                                 provider: WebhookProvider) -> None:
    outcomes = await asyncio.gather(*(provider.send(delivery(f"send-{i}")) for i in range(20)))
    assert all(outcome.status == DELIVERED for outcome in outcomes)
    assert sorted(call.delivery_id or "" for call in receiver.calls) == sorted(f"send-{i}" for i in range(20))


async def test_close_is_idempotent_and_a_closed_provider_can_send_again(receiver: WebhookReceiver) -> None:
    webhook = WebhookProvider(WebhookSettings(receiver.url, SECRET))
    await webhook.close()  # never used: nothing to close
    assert (await webhook.send(delivery())).status == DELIVERED
    await webhook.close()
    await webhook.close()
    assert (await webhook.send(delivery("send-2"))).status == DELIVERED
    await webhook.close()


def test_the_threaded_receiver_serves_while_the_caller_blocks() -> None:
    with ThreadedWebhookReceiver(SECRET) as receiver:
        receiver.fail_next(1, 500)

        async def send_twice() -> list[str]:
            webhook = WebhookProvider(WebhookSettings(receiver.url, SECRET))
            try:
                return [(await webhook.send(delivery(f"send-{i}"))).status for i in range(2)]
            finally:
                await webhook.close()

        assert asyncio.run(send_twice()) == [TRANSIENT, DELIVERED]
        assert [call.status for call in receiver.wait_for_calls(2, timeout_s=5)] == [500, 200]
    with pytest.raises(RuntimeError, match="not started"):
        ThreadedWebhookReceiver(SECRET).url
