"""Which SNS messages are genuine: signatures as SNS makes them, versions 1 and 2."""

from __future__ import annotations

from typing import Any

import pytest

from kairos.channels.sns_messages import NotGenuine, string_to_sign, verify
from tests.loopback.sns import sign, signing_pair

pytestmark = pytest.mark.timeout(30)

KEY, CERTIFICATE = signing_pair()
NOTIFICATION: dict[str, Any] = {
    "Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-events",
    "Message": '{"eventType": "Delivery"}', "Timestamp": "2026-11-24T10:00:00.000Z",
    "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
}


def test_the_string_to_sign_follows_awss_field_list() -> None:
    assert string_to_sign(NOTIFICATION) == (
        b"Message\n{\"eventType\": \"Delivery\"}\nMessageId\nm-1\nTimestamp\n2026-11-24T10:00:00.000Z\n"
        b"TopicArn\narn:aws:sns:us-east-1:123456789012:ses-events\nType\nNotification\n")
    with_subject = string_to_sign({**NOTIFICATION, "Subject": "Hi"})
    assert b"MessageId\nm-1\nSubject\nHi\nTimestamp\n" in with_subject


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_message_is_genuine_and_any_change_is_not(version: str) -> None:
    signed = sign(NOTIFICATION, KEY, version)
    verify(signed, CERTIFICATE)
    for field, value in (("Message", '{"eventType": "Bounce"}'), ("TopicArn", "arn:aws:sns:us-east-1:1:x"),
                         ("SignatureVersion", "2" if version == "1" else "1")):
        with pytest.raises(NotGenuine):
            verify({**signed, field: value}, CERTIFICATE)


def test_another_key_or_a_broken_message_is_refused() -> None:
    _, other_certificate = signing_pair()
    signed = sign(NOTIFICATION, KEY)
    with pytest.raises(NotGenuine, match="does not match"):
        verify(signed, other_certificate)
    with pytest.raises(NotGenuine, match="SignatureVersion"):
        verify({**signed, "SignatureVersion": "3"}, CERTIFICATE)
    with pytest.raises(NotGenuine, match="unreadable"):
        verify({**signed, "Signature": "not base64!"}, CERTIFICATE)
    with pytest.raises(NotGenuine, match="Timestamp"):
        verify({k: v for k, v in signed.items() if k != "Timestamp"}, CERTIFICATE)
    with pytest.raises(NotGenuine, match="Type"):
        verify({**signed, "Type": "Gossip"}, CERTIFICATE)
