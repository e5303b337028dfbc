"""The SES and SNS providers with real boto3 over real HTTP against moto's server on
loopback: what moto recorded, and how each failure comes back as an Outcome."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import AsyncIterator, Iterator

import pytest
from botocore.exceptions import ClientError

from kairos.channels import ses, sns
from kairos.channels.aws_common import classify_client_error
from kairos.channels.base import DELIVERED, REJECTED, TRANSIENT, Delivery
from tests.loopback.aws import MotoLoopback

pytestmark = pytest.mark.timeout(30)

SENDER = "shop@example.com"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoLoopback]:
    with MotoLoopback() as server:
        yield server


@pytest.fixture
def fresh_moto(moto: MotoLoopback) -> MotoLoopback:
    moto.reset()
    moto.client("sesv2").create_email_identity(EmailIdentity=SENDER)
    return moto


@pytest.fixture
async def ses_provider(fresh_moto: MotoLoopback) -> AsyncIterator[ses.SesProvider]:
    provider = ses.SesProvider(ses.parse_settings(fresh_moto.settings(from_address=f"Shop <{SENDER}>"), "ses"))
    yield provider
    await provider.close()


@pytest.fixture
async def sns_provider(fresh_moto: MotoLoopback) -> AsyncIterator[sns.SnsProvider]:
    provider = sns.SnsProvider(sns.parse_settings(fresh_moto.settings(sender_id="Kairos"), "sns"))
    yield provider
    await provider.close()


def email(address: str = "ann@example.org", **message: str) -> Delivery:
    body = {"subject": "Your cart misses you", "html": "<p>Come <b>back</b></p>", "text": "Come back", **message}
    return Delivery("acme/cart/1/ann/7/n2", "acme", "ann", "email", address, body)


def sms(phone: str, text: str = "Your code is 1234") -> Delivery:
    return Delivery("acme/otp/1/ann/1/n1", "acme", "ann", "sms", phone, {"text": text})


async def test_ses_delivered_and_recorded(ses_provider: ses.SesProvider, fresh_moto: MotoLoopback) -> None:
    outcome = await ses_provider.send(email())
    assert outcome.status == DELIVERED and outcome.provider_id
    [sent] = fresh_moto.records().emails
    assert (sent.to, sent.subject, sent.body) == (["ann@example.org"], "Your cart misses you",
                                                  "<p>Come <b>back</b></p>")
    assert sent.source == f"Shop <{SENDER}>"


async def test_ses_text_only(ses_provider: ses.SesProvider, fresh_moto: MotoLoopback) -> None:
    outcome = await ses_provider.send(Delivery("s1", "acme", "ann", "email", "ann@example.org",
                                               {"subject": "Hi", "text": "Plain"}))
    assert outcome.status == DELIVERED
    assert [e.body for e in fresh_moto.records().emails] == ["Plain"]


async def test_ses_unverified_sender_is_rejected(ses_provider: ses.SesProvider, fresh_moto: MotoLoopback) -> None:
    outcome = await ses_provider.send(email(**{"from": "other@example.net"}))
    assert (outcome.status, outcome.unreachable) == (REJECTED, False)
    assert "MessageRejected" in outcome.detail and "not verified" in outcome.detail
    assert fresh_moto.records().emails == []


async def test_ses_bad_recipient_is_unreachable_without_a_call(ses_provider: ses.SesProvider,
                                                                fresh_moto: MotoLoopback) -> None:
    outcome = await ses_provider.send(email("ann at example.org"))
    assert (outcome.status, outcome.unreachable) == (REJECTED, True)


async def test_ses_message_without_body_is_rejected(ses_provider: ses.SesProvider) -> None:
    outcome = await ses_provider.send(Delivery("s1", "acme", "ann", "email", "ann@example.org", {"subject": "Hi"}))
    assert (outcome.status, outcome.unreachable) == (REJECTED, False)


async def test_ses_server_stopped_is_transient() -> None:
    with MotoLoopback() as gone:
        raw = gone.settings(from_address=SENDER, timeout_s=5)
    provider = ses.SesProvider(ses.parse_settings(raw, "ses"))
    try:
        outcome = await provider.send(email())
    finally:
        await provider.close()
    assert outcome.status == TRANSIENT and "Could not connect" in outcome.detail


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts connections (the kernel does) but never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def test_ses_no_answer_times_out_transient(moto: MotoLoopback, silent_url: str) -> None:
    raw = {**moto.settings(from_address=SENDER), "endpoint_url": silent_url, "timeout_s": 0.5}
    provider = ses.SesProvider(ses.parse_settings(raw, "ses"))
    started = time.monotonic()
    try:
        outcome = await provider.send(email())
    finally:
        await provider.close()
    # Our wait_for or botocore's read timeout, whichever fires first: both are 0.5 s.
    assert outcome.status == TRANSIENT and time.monotonic() - started < 3


async def test_sns_sms_delivered_and_recorded(sns_provider: sns.SnsProvider, fresh_moto: MotoLoopback) -> None:
    outcome = await sns_provider.send(sms("+14155550123"))
    assert outcome.status == DELIVERED
    [sent] = fresh_moto.records().sms
    assert (sent.message_id, sent.phone_number, sent.message) == (outcome.provider_id, "+14155550123",
                                                                  "Your code is 1234")


async def test_sns_invalid_phone_is_unreachable(sns_provider: sns.SnsProvider, fresh_moto: MotoLoopback) -> None:
    outcome = await sns_provider.send(sms("+0-not-a-number"))
    assert (outcome.status, outcome.unreachable) == (REJECTED, True)
    assert "InvalidParameter" in outcome.detail
    assert fresh_moto.records().sms == []


async def test_sns_too_long_is_rejected_but_reachable(sns_provider: sns.SnsProvider) -> None:
    # The same InvalidParameter code, about the message this time: the number stays.
    outcome = await sns_provider.send(sms("+14155550123", "x" * 2000))
    assert (outcome.status, outcome.unreachable) == (REJECTED, False)


async def test_sns_server_stopped_is_transient() -> None:
    with MotoLoopback() as gone:
        raw = gone.settings(timeout_s=5)
    provider = sns.SnsProvider(sns.parse_settings(raw, "sns"))
    try:
        outcome = await provider.send(sms("+14155550123"))
    finally:
        await provider.close()
    assert outcome.status == TRANSIENT


async def test_concurrent_sends_share_one_client(ses_provider: ses.SesProvider, fresh_moto: MotoLoopback) -> None:
    outcomes = await asyncio.gather(*(ses_provider.send(email(f"user{i}@example.org")) for i in range(20)))
    assert {o.status for o in outcomes} == {DELIVERED}
    assert sorted(e.to[0] for e in fresh_moto.records().emails) == sorted(f"user{i}@example.org" for i in range(20))


def test_tag_value_is_in_ses_alphabet_and_unambiguous() -> None:
    assert ses.tag_value("acme/cart/1/ann@x.org/7/n2") == "acme_2f_cart_2f_1_2f_ann_40_x_2e_org_2f_7_2f_n2"
    assert ses.tag_value("a_2f_b") != ses.tag_value("a/b")
    assert len(ses.tag_value("é" * 400)) == 256


@pytest.mark.parametrize(("service", "code", "status", "message", "expected"), [
    ("sesv2", "MessageRejected", 400, "Email address is not verified: ann@example.org", (REJECTED, False)),
    ("sesv2", "MailFromDomainNotVerifiedException", 400, "", (REJECTED, False)),
    ("sesv2", "AccountSuspendedException", 400, "", (REJECTED, False)),
    ("sesv2", "SendingPausedException", 400, "", (REJECTED, False)),
    ("sesv2", "NotFoundException", 404, "configuration set", (REJECTED, False)),
    ("sesv2", "TooManyRequestsException", 429, "", (TRANSIENT, False)),
    ("sesv2", "LimitExceededException", 400, "Maximum sending rate exceeded", (TRANSIENT, False)),
    ("sesv2", "Throttling", 400, "Rate exceeded", (TRANSIENT, False)),
    ("sesv2", "InternalFailure", 500, "", (TRANSIENT, False)),
    ("sesv2", "", 503, "", (TRANSIENT, False)),
    ("sns", "InvalidParameter", 400, "Invalid parameter: PhoneNumber Reason: +1 is not valid", (REJECTED, True)),
    ("sns", "InvalidParameter", 400, "Invalid parameter: Phone number is opted out", (REJECTED, False)),
    ("sns", "InvalidParameter", 400, "Invalid parameter: Message too long", (REJECTED, False)),
    ("sns", "AuthorizationError", 403, "not authorized to perform SNS:Publish", (REJECTED, False)),
    ("sns", "Throttling", 400, "Rate exceeded", (TRANSIENT, False)),
    ("sns", "InternalError", 500, "", (TRANSIENT, False)),
])
def test_client_errors_classified(service: str, code: str, status: int, message: str,
                                  expected: tuple[str, bool]) -> None:
    error = ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
                        "Op")
    unreachable = sns._unreachable if service == "sns" else ses._never_unreachable
    outcome = classify_client_error(service, error, unreachable)
    assert (outcome.status, outcome.unreachable) == expected


async def test_send_after_close_is_transient(fresh_moto: MotoLoopback) -> None:
    # The registry closes a provider whose settings changed while sends may still be on their way.
    provider = sns.SnsProvider(sns.parse_settings(fresh_moto.settings(), "sns"))
    assert (await provider.send(sms("+14155550123"))).status == DELIVERED
    await provider.close()
    assert (await provider.send(sms("+14155550123"))).status == TRANSIENT
    assert len(fresh_moto.records().sms) == 1
