"""The SMTP provider (aiosmtplib) against a real SMTP server (aiosmtpd) on loopback: the
MIME it builds, how refusals come back, and the one connection it keeps."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Iterator

import pytest

from kairos.channels import smtp
from kairos.channels.base import DELIVERED, REJECTED, TRANSIENT, Delivery
from tests.loopback.smtp import SmtpLoopback

pytestmark = pytest.mark.timeout(30)

SENDER = "shop@example.com"


@pytest.fixture(scope="module")
def server_module() -> Iterator[SmtpLoopback]:
    with SmtpLoopback(auth=("kairos", "s3cret")) as server:
        yield server


@pytest.fixture
def server(server_module: SmtpLoopback) -> SmtpLoopback:
    server_module.reset()
    return server_module


def settings(server: SmtpLoopback, **extra: Any) -> smtp.SmtpSettings:
    raw = {"host": server.host, "port": server.port, "security": "none", "from_address": f"Shop <{SENDER}>",
           "timeout_s": 5, **extra}
    return smtp.parse_settings(raw, "smtp")


@pytest.fixture
async def provider(server: SmtpLoopback) -> AsyncIterator[smtp.SmtpProvider]:
    p = smtp.SmtpProvider(settings(server))
    yield p
    await p.close()


def email(address: str = "ann@example.org", send_id: str = "acme/cart/1/ann/7/n2", **message: str) -> Delivery:
    body = {"subject": "Your cart misses you", "html": "<p>Come <b>back</b></p>", "text": "Come back", **message}
    return Delivery(send_id, "acme", "ann", "email", address, body)


async def test_delivered_as_multipart_alternative(provider: smtp.SmtpProvider, server: SmtpLoopback) -> None:
    outcome = await provider.send(email())
    assert outcome.status == DELIVERED
    [received] = server.messages
    assert (received.mail_from, received.rcpt_tos) == (SENDER, ["ann@example.org"])
    message = received.message
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    text, html = (message.get_body(("plain",)), message.get_body(("html",)))
    assert text is not None and text.get_content().strip() == "Come back"
    assert html is not None and html.get_content().strip() == "<p>Come <b>back</b></p>"
    assert message["Subject"] == "Your cart misses you"
    assert message["From"] == f"Shop <{SENDER}>" and message["To"] == "ann@example.org"
    assert message["X-Kairos-Send-Id"] == "acme/cart/1/ann/7/n2"
    assert message["Message-ID"] == outcome.provider_id and message["Message-ID"].endswith("@example.com>")
    assert message["Date"]


async def test_message_id_is_stable_per_send(provider: smtp.SmtpProvider, server: SmtpLoopback) -> None:
    first, retry, other = [await provider.send(email(send_id=s)) for s in ("s1", "s1", "s2")]
    assert first.provider_id == retry.provider_id != other.provider_id


async def test_html_only_and_non_ascii(provider: smtp.SmtpProvider, server: SmtpLoopback) -> None:
    outcome = await provider.send(Delivery("s-ü", "acme", "ann", "email", "ann@example.org",
                                           {"subject": "Grüße ✓", "html": "<p>Schön</p>"}))
    assert outcome.status == DELIVERED
    message = server.messages[0].message
    assert message.get_content_type() == "text/html" and "Schön" in message.get_content()
    assert message["Subject"] == "Grüße ✓" and message["X-Kairos-Send-Id"] == "s-ü"


@pytest.mark.parametrize(("reply", "status", "unreachable"), [
    ("550 5.1.1 No such user", REJECTED, True),
    ("550 No such user", REJECTED, True),  # no enhanced status: the basic code decides
    ("553 5.1.3 Bad recipient address syntax", REJECTED, True),
    ("550 5.7.1 Client host blocked", REJECTED, False),  # policy: says nothing about the mailbox
    ("552 5.2.2 Mailbox full", REJECTED, False),
    ("554 Transaction failed", REJECTED, False),
    ("451 4.3.0 Try again later", TRANSIENT, False),
    ("450 4.2.1 Mailbox busy", TRANSIENT, False),
])
async def test_recipient_refusals(provider: smtp.SmtpProvider, server: SmtpLoopback, reply: str, status: str,
                                  unreachable: bool) -> None:
    server.refuse("ann@example.org", reply)
    outcome = await provider.send(email())
    assert (outcome.status, outcome.unreachable) == (status, unreachable)
    assert reply[:3] in outcome.detail and reply[4:] in outcome.detail


async def test_bad_address_is_unreachable_without_a_call(provider: smtp.SmtpProvider, server: SmtpLoopback) -> None:
    outcome = await provider.send(email("ann@example.org>\r\nRCPT TO:<x@y.z"))
    assert (outcome.status, outcome.unreachable) == (REJECTED, True)
    assert server.messages == []


async def test_no_server_is_transient() -> None:
    gone = SmtpLoopback().start()
    gone.stop()
    provider = smtp.SmtpProvider(settings(gone))
    try:
        outcome = await provider.send(email())
    finally:
        await provider.close()
    assert outcome.status == TRANSIENT


async def test_slow_server_times_out_transient_then_recovers(server: SmtpLoopback) -> None:
    provider = smtp.SmtpProvider(settings(server, timeout_s=0.5))
    try:
        server.answer_slowly(2.0)
        started = time.monotonic()
        outcome = await provider.send(email())
        assert outcome.status == TRANSIENT and time.monotonic() - started < 2
        server.answer_slowly(0)
        # The half-done exchange was abandoned with its connection: a new one works.
        assert (await provider.send(email())).status == DELIVERED
    finally:
        await provider.close()


async def test_sends_reuse_one_connection(provider: smtp.SmtpProvider, server: SmtpLoopback) -> None:
    server.refuse("gone@example.org", "550 5.1.1 No such user")
    statuses = [(await provider.send(email(address))).status
                for address in ("a@example.org", "gone@example.org", "b@example.org", "c@example.org")]
    assert statuses == [DELIVERED, REJECTED, DELIVERED, DELIVERED]
    # The refusal did not cost the connection (aiosmtplib reset the envelope).
    assert len({m.peer for m in server.messages}) == 1
    assert [m.rcpt_tos for m in server.messages] == [["a@example.org"], ["b@example.org"], ["c@example.org"]]


async def test_reconnects_after_the_server_drops_the_connection(provider: smtp.SmtpProvider,
                                                                 server: SmtpLoopback) -> None:
    assert (await provider.send(email("a@example.org"))).status == DELIVERED
    server.drop_connections()
    assert (await provider.send(email("b@example.org"))).status == DELIVERED
    server.drop_connections()
    await asyncio.sleep(0.1)  # this time the client has seen the close before it sends
    assert (await provider.send(email("c@example.org"))).status == DELIVERED
    assert len({m.peer for m in server.messages}) == 3


async def test_concurrent_sends_share_the_pool_and_waiting_is_not_a_timeout(server: SmtpLoopback) -> None:
    provider = smtp.SmtpProvider(settings(server, connections=2, timeout_s=0.5))
    server.answer_slowly(0.05)
    try:
        # 20 sends over 2 connections take ~0.5 s in all, longer than the timeout of each.
        outcomes = await asyncio.gather(*(provider.send(email(f"user{i}@example.org", send_id=f"s{i}"))
                                          for i in range(20)))
    finally:
        server.answer_slowly(0)
        await provider.close()
    assert [o.status for o in outcomes] == [DELIVERED] * 20, {o.detail for o in outcomes}
    assert len(server.messages) == 20 and len({m.peer for m in server.messages}) == 2


async def test_login(server: SmtpLoopback) -> None:
    good = smtp.SmtpProvider(settings(server, username="kairos", password="s3cret"))
    bad = smtp.SmtpProvider(settings(server, username="kairos", password="wrong"))
    try:
        assert (await good.send(email())).status == DELIVERED
        refused = await bad.send(email())
        assert (refused.status, refused.unreachable) == (REJECTED, False) and "535" in refused.detail
    finally:
        await good.close()
        await bad.close()


async def test_starttls_required_but_not_offered_is_rejected(server: SmtpLoopback) -> None:
    provider = smtp.SmtpProvider(settings(server, security="starttls"))
    try:
        outcome = await provider.send(email())
    finally:
        await provider.close()
    assert (outcome.status, outcome.unreachable) == (REJECTED, False)
    assert server.messages == []


async def test_send_after_close_is_transient(server: SmtpLoopback) -> None:
    # The registry closes a provider whose settings changed while sends may still be queued on it.
    provider = smtp.SmtpProvider(settings(server))
    assert (await provider.send(email())).status == DELIVERED
    await provider.close()
    assert (await provider.send(email())).status == TRANSIENT
    assert len(server.messages) == 1
