"""The FCM provider: the real firebase-admin SDK and the real google-auth credential
inside it, against a local FCM-v1 server that also runs the OAuth token exchange."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import requests

from kairos.channels.base import DELIVERED, REJECTED, TRANSIENT, Delivery
from kairos.channels.fcm import FcmProvider, FcmSettings, parse_settings
from tests.loopback.fcm_server import PROJECT, FcmServer, FcmServerThread, make_service_account

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

MESSAGE = {"title": "Your cart misses you", "body": "Ann, the watch is still there",
           "data": {"sku": "W-1", "deep_link": "shop://cart"}, "image": "https://cdn.example.com/w1.png"}


def delivery(token: str, send_id: str = "send-1", message: dict | None = None) -> Delivery:
    return Delivery(send_id, "acme", "user-7", "push", token, MESSAGE if message is None else message)


def settings_for(server: FcmServer, timeout_s: float = 5.0) -> FcmSettings:
    # Through parse_settings, as an account's stored settings would arrive.
    return parse_settings({"provider": "fcm", "project_id": PROJECT, "service_account": server.service_account(),
                           "endpoint": server.url, "timeout_s": timeout_s}, "push")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FcmServer]:
    async with FcmServer() as running:
        yield running


@pytest_asyncio.fixture
async def provider(server: FcmServer) -> AsyncIterator[FcmProvider]:
    fcm = FcmProvider(settings_for(server))
    try:
        yield fcm
    finally:
        await fcm.close()


async def test_a_delivered_message_arrives_with_the_token_from_the_oauth_exchange(
        server: FcmServer, provider: FcmProvider) -> None:
    outcome = await provider.send(delivery("device-token-1"))
    assert outcome.status == DELIVERED
    [received] = server.received
    assert outcome.provider_id == received.name == f"projects/{PROJECT}/messages/1"
    assert received.project == PROJECT
    assert received.message == {"token": "device-token-1", "data": MESSAGE["data"],
                                "notification": {"title": MESSAGE["title"], "body": MESSAGE["body"],
                                                 "image": MESSAGE["image"]}}
    # The bearer came from a real JWT-bearer grant that the server verified.
    assert server.token_requests == 1 and received.bearer in server.issued_tokens


async def test_the_token_is_refreshed_once_and_reused(server: FcmServer, provider: FcmProvider) -> None:
    outcomes = await asyncio.gather(*(provider.send(delivery(f"tok-{i}", f"s-{i}")) for i in range(5)))
    assert [o.status for o in outcomes] == [DELIVERED] * 5
    assert (await provider.send(delivery("tok-last"))).provider_id == f"projects/{PROJECT}/messages/6"
    assert server.token_requests == 1
    assert len({r.bearer for r in server.received}) == 1


async def test_an_unregistered_token_is_rejected_as_unreachable(server: FcmServer, provider: FcmProvider) -> None:
    server.unregister("stale-token")
    outcome = await provider.send(delivery("stale-token"))
    assert outcome.status == REJECTED and outcome.unreachable
    assert "UnregisteredError" in outcome.detail
    assert server.received == []


async def test_an_invalid_token_or_payload_is_rejected_but_not_unreachable(
        server: FcmServer, provider: FcmProvider) -> None:
    server.invalidate("garbled")
    bad_token = await provider.send(delivery("garbled"))
    reserved_key = await provider.send(delivery("good", message={"title": "t", "data": {"from": "me"}}))
    for outcome in (bad_token, reserved_key):
        assert outcome.status == REJECTED and not outcome.unreachable
        assert "InvalidArgumentError" in outcome.detail


async def test_messages_the_sdk_would_refuse_are_rejected_alone(server: FcmServer, provider: FcmProvider) -> None:
    outcomes = await provider.send_many([
        delivery("t1", message={"title": "ok"}),
        delivery("t2", message={"title": "x", "data": {"count": 3}}),
        delivery("", message={"title": "x"}),
        delivery("t4", message={"image": "https://cdn.example.com/a.png"}),
        delivery("t5", message={"body": "ok too"}),
    ])
    assert [o.status for o in outcomes] == [DELIVERED, REJECTED, REJECTED, REJECTED, DELIVERED]
    assert outcomes[1].detail == "message.data.count must be a string"
    assert outcomes[2].detail == "push token is empty"
    assert [r.message["token"] for r in server.received] == ["t1", "t5"]


async def test_an_outage_is_transient_at_once_for_the_router_to_retry(server: FcmServer) -> None:
    fcm = FcmProvider(settings_for(server, timeout_s=15.0))
    try:
        server.set_outage(503)
        outcome = await fcm.send(delivery("device-token-1"))
        assert outcome.status == TRANSIENT and "UnavailableError" in outcome.detail
        # One request: the SDK's own retries are off, the router's backoff decides.
        assert server.send_requests == 1
        server.set_outage(None)
        assert (await fcm.send(delivery("device-token-1"))).status == DELIVERED
    finally:
        await fcm.close()


async def test_quota_exceeded_is_transient_without_retries(server: FcmServer, provider: FcmProvider) -> None:
    server.set_outage(429)
    outcome = await provider.send(delivery("device-token-1"))
    assert outcome.status == TRANSIENT and "QuotaExceededError" in outcome.detail
    assert server.send_requests == 1


async def test_a_slow_server_is_transient_after_the_timeout(server: FcmServer) -> None:
    fcm = FcmProvider(settings_for(server, timeout_s=0.5))
    try:
        server.set_delay(5.0)
        started = time.monotonic()
        outcome = await fcm.send(delivery("device-token-1"))
        assert outcome.status == TRANSIENT
        assert time.monotonic() - started < 2.0
    finally:
        await fcm.close()


@pytest.fixture
def refusing_port() -> Iterator[int]:
    # Bound but never listening: connections are refused, and no other test can take the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_an_unreachable_endpoint_is_transient(server: FcmServer, refusing_port: int) -> None:
    settings = settings_for(server)
    fcm = FcmProvider(FcmSettings(PROJECT, settings.service_account, f"http://127.0.0.1:{refusing_port}", 5.0))
    try:
        outcome = await fcm.send(delivery("device-token-1"))
        assert outcome.status == TRANSIENT and "UnavailableError" in outcome.detail
    finally:
        await fcm.close()


async def test_a_refused_credential_is_transient(server: FcmServer) -> None:
    untrusted = make_service_account(server.token_uri)  # the server never learns its key
    fcm = FcmProvider(FcmSettings(PROJECT, untrusted, server.url, 5.0))
    try:
        outcome = await fcm.send(delivery("device-token-1"))
        assert outcome.status == TRANSIENT and "RefreshError" in outcome.detail
        assert server.send_requests == 0
    finally:
        await fcm.close()


async def test_a_batch_of_50_gives_50_outcomes_in_order(server: FcmServer, provider: FcmProvider) -> None:
    tokens = [f"token-{i:02d}" for i in range(50)]
    server.unregister(*tokens[3::7])
    server.invalidate(tokens[11], tokens[21])
    deliveries = [delivery(t, f"send-{i}", {"title": "Hi", "body": t}) for i, t in enumerate(tokens)]
    deliveries[30] = delivery(tokens[30], "send-30", {"title": "Hi", "data": {"n": 1}})  # refused before sending

    outcomes = await provider.send_many(deliveries)

    assert len(outcomes) == 50
    for i, (token, outcome) in enumerate(zip(tokens, outcomes)):
        if i % 7 == 3:
            assert (outcome.status, outcome.unreachable) == (REJECTED, True), token
        elif i in (11, 21, 30):
            assert (outcome.status, outcome.unreachable) == (REJECTED, False), token
        else:
            assert outcome.status == DELIVERED, token
    by_name = {r.name: r.message for r in server.received}
    delivered = [(t, o) for t, o in zip(tokens, outcomes) if o.status == DELIVERED]
    assert len(by_name) == len(delivered) == 50 - 7 - 3
    for token, outcome in delivered:
        assert by_name[outcome.provider_id or ""] == {"token": token, "notification": {"title": "Hi", "body": token}}


async def test_a_threaded_server_answers_while_the_loop_is_blocked() -> None:
    # The shape integration tests with Ray actors need: the server lives on its own loop.
    with FcmServerThread() as server:
        fcm = FcmProvider(settings_for(server))
        try:
            assert (await fcm.send(delivery("device-token-1"))).status == DELIVERED
            server.unregister("gone")
            assert (await fcm.send(delivery("gone"))).unreachable
            # A blocking call on this loop (as ray.get would be) still gets its answer.
            answer = requests.post(server.token_uri, data={"grant_type": "password"}, timeout=5)
            assert answer.status_code == 400 and answer.json() == {"error": "unsupported_grant_type"}
        finally:
            await fcm.close()
        assert [r.message["token"] for r in server.received] == ["device-token-1"]
