"""SES's reports on sent email, on the running deployment: a journey's email goes out
through real boto3 to moto's SES, then deliveries, bounces and complaints for those very
messages (by the message ids SES gave) come to the gateway as SNS posts them, signed,
and end up in the users' event streams, profiles and the delivery stats."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterator

import pytest
import redis.asyncio as aioredis

from kairos import keys
from kairos.journeys.clock import ManualClock
from tests.integration.conftest import Api, Kairos
from tests.loopback.aws import MotoLoopback
from tests.loopback.sns import SnsLoopback

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOPIC = "arn:aws:sns:us-east-1:123456789012:kairos-ses-events"
SENDER = "shop@example.com"
RECEIPT = {
    "entry": {"event": "Ordered"},
    "start": "mail",
    "nodes": {"mail": {"type": "send", "channel": "email",
                       "message": {"subject": "Thanks, {{ profile.Name }}", "text": "Your order is in."}}},
}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoLoopback]:
    with MotoLoopback() as server:
        ses = server.client("sesv2")
        ses.create_email_identity(EmailIdentity=SENDER)
        ses.create_configuration_set(ConfigurationSetName="kairos-events")
        yield server


@pytest.fixture(scope="module")
def sns() -> Iterator[SnsLoopback]:
    with SnsLoopback() as server:
        yield server


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)
    return found


async def post(api: Api, message: dict[str, Any]) -> tuple[int, str]:
    # As SNS posts: JSON, labelled text/plain.
    async with api.session.post(f"{api.base}/t/ses/{api.creds.account_id}", data=json.dumps(message),
                                headers={"Content-Type": "text/plain; charset=UTF-8",
                                         "x-amz-sns-message-type": message.get("Type", "")}) as response:
        return response.status, await response.text()


async def sent(moto: MotoLoopback, addresses: dict[str, str]) -> dict[str, str]:
    """SES's message ids of the mails to these addresses, once there is one for each."""
    found = {m.to[0]: m.message_id for m in moto.records().emails if m.to[0] in addresses.values()}
    return found if len(found) == len(addresses) else {}


def ses_event(kind: str, message_id: str, address: str, **section: Any) -> dict[str, Any]:
    return {"eventType": kind, "mail": {"messageId": message_id, "destination": [address], "source": SENDER},
            **section}


async def test_deliveries_bounces_and_complaints_reach_the_users(
        kairos: Kairos, make_api: Callable[[], Awaitable[Api]], moto: MotoLoopback, sns: SnsLoopback) -> None:
    api = await make_api()
    status, body = await api.request("PUT", "/api/settings/delivery", {"settings": {"providers": {"email": {
        "provider": "ses", **moto.settings(from_address=SENDER, configuration_set="kairos-events",
                                           events_topic_arn=TOPIC)}}}})
    assert status == 200, body

    endpoint = f"{api.base}/t/ses/{api.creds.account_id}"
    for body, status in (("not json", 400), ("[1]", 400), ("{}", 403)):
        async with api.session.post(endpoint, data=body) as response:
            assert response.status == status and (await response.json())["status"] == "fail"
    async with api.session.post(f"{api.base}/t/ses/no-such-account", data=json.dumps(
            sns.subscription_confirmation(TOPIC))) as response:
        assert response.status == 403
    assert sns.confirmations == []

    # SNS first asks the endpoint to confirm the subscription.
    confirmation = sns.subscription_confirmation(TOPIC)
    assert await post(api, confirmation) == (200, "")
    assert sns.confirmations == [confirmation["Token"]]
    # Anyone can make an SNS topic: only the account's own is taken, and only signed by SNS.
    status, _ = await post(api, sns.notification(TOPIC.replace("kairos-ses-events", "other"), {}))
    assert status == 403
    forged = {**sns.notification(TOPIC, ses_event("Delivery", "x", "x@example.com")), "Message": "{}"}
    status, text = await post(api, forged)
    assert status == 403 and "signature" in text

    # A report on one of Kairos's mails (it carries the send id tag) that comes before the
    # router has noted SES's message id: 503, so that SNS retries it.
    early = ses_event("Delivery", "not-noted-yet", "x@example.com", delivery={})
    early["mail"].update(tags={"kairos_send_id": ["x"]}, timestamp=datetime.now(timezone.utc).isoformat())
    status, text = await post(api, sns.notification(TOPIC, early))
    assert status == 503 and "retry" in text
    stale = {**sns.notification(TOPIC, early), "Timestamp": "2026-01-01T00:00:00.000Z"}
    status, text = await post(api, stale)  # a replay (its signature no longer matters)
    assert status == 403 and "replay" in text

    addresses = {name: f"{name}-{api.creds.account_id}@example.org" for name in ("ann", "bob")}
    status, _ = await api.upload([{"identity": name, "type": "profile", "profileData": {"Name": name.title(),
                                                                                         "Email": address}}
                                  for name, address in addresses.items()])
    assert status == 200
    status, body = await api.request("PUT", "/api/journeys/receipt", {"definition": RECEIPT})
    assert status == 200, body
    client = aioredis.Redis.from_url(kairos.settings.redis_url)
    try:
        now_s = await ManualClock(client).now_ms() // 1000  # the deployment's journeys run on it
        await api.upload([{"identity": name, "type": "event", "evtName": "Ordered", "ts": now_s, "evtData": {}}
                          for name in addresses])
        ids = await eventually(lambda: sent(moto, addresses))
        # SES may report before the router has noted which send a message id is (it does
        # so with the outcome, just after SES answered); SNS would retry such a report.
        for message_id in ids.values():
            await eventually(lambda: client.exists(keys.provider_message(api.creds.account_id, message_id)))
    finally:
        await client.aclose()

    ann_id, bob_id = ids[addresses["ann"]], ids[addresses["bob"]]
    bounce = sns.notification(TOPIC, ses_event("Bounce", bob_id, addresses["bob"], bounce={
        "bounceType": "Permanent", "bounceSubType": "General",
        "bouncedRecipients": [{"emailAddress": addresses["bob"], "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}))
    for message in (sns.notification(TOPIC, ses_event("Delivery", ann_id, addresses["ann"], delivery={})),
                    bounce, bounce,  # SNS delivers at least once
                    sns.notification(TOPIC, ses_event("Complaint", ann_id, addresses["ann"], complaint={})),
                    sns.notification(TOPIC, ses_event("Delivery", "not-a-kairos-message", "z@example.org",
                                                      delivery={}))):
        assert await post(api, message) == (200, "")

    async def applied() -> bool:
        _, bob = await api.profile(identity="bob")
        _, ann = await api.profile(identity="ann")
        return bob["record"]["profileData"].get("Email") is None and ann["record"]["profileData"].get("MSG-email") is False

    await eventually(applied)
    await eventually(lambda: api.count_events("Notification Failed"))
    assert await api.count_events("Notification Delivered") == 1
    assert await api.count_events("Notification Failed") == 1
    status, stats = await api.request("GET", "/api/deliveries/stats")
    email = stats["channels"]["email"]
    assert (email["sent"], email["delivered"], email["bounced"], email["complained"]) == (2, 1, 1, 1)
    assert stats["sources"]["journey:receipt"]["bounced"] == 1
