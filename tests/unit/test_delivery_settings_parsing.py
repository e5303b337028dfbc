"""The delivery providers' settings: what is accepted, and that every refusal names the
field at fault. No sockets: parsing never touches the network."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from kairos.channels import ses, smtp, sns
from kairos.routing.settings import MASK, masked, parse_delivery_settings, unmasked
from kairos.segments.definition import SegmentError

pytestmark = pytest.mark.timeout(30)

AWS = {"region": "eu-west-1"}
SES = {**AWS, "from_address": "Shop <shop@example.com>"}
SMTP = {"host": "smtp.example.com", "from_address": "shop@example.com"}


def refusal(parse: Callable[[Any, str], Any], raw: Any) -> SegmentError:
    with pytest.raises(SegmentError) as info:
        parse(raw, "channels.email")
    return info.value


def test_ses_minimal_and_full() -> None:
    minimal = ses.parse_settings(SES, "ses")
    assert minimal == ses.SesSettings(region="eu-west-1", from_address="Shop <shop@example.com>")
    assert minimal.timeout_s == 10.0 and minimal.access_key_id is None and minimal.configuration_set is None
    full = ses.parse_settings({**SES, "provider": "ses", "access_key_id": "AKIA1", "secret_access_key": "s3cret",
                               "endpoint_url": "http://127.0.0.1:5000", "configuration_set": "kairos-events",
                               "timeout_s": 2.5}, "ses")
    assert (full.access_key_id, full.endpoint_url, full.configuration_set, full.timeout_s) == (
        "AKIA1", "http://127.0.0.1:5000", "kairos-events", 2.5)
    assert "s3cret" not in repr(full) and "AKIA1" in repr(full)
    reporting = ses.parse_settings({**SES, "configuration_set": "c", "events_topic_arn": "arn:aws:sns:eu-west-1:123456789012:ses-events"})
    assert reporting.events_topic_arn == "arn:aws:sns:eu-west-1:123456789012:ses-events"


@pytest.mark.parametrize(("raw", "path"), [
    ([], "channels.email"),
    ({**SES, "provider": "sns"}, "channels.email.provider"),
    ({**SES, "form_address": "x@y.z"}, "channels.email.form_address"),
    ({"from_address": "shop@example.com"}, "channels.email.region"),
    ({**SES, "region": "Europe"}, "channels.email.region"),
    ({**AWS}, "channels.email.from_address"),
    ({**SES, "from_address": "shop"}, "channels.email.from_address"),
    ({**SES, "from_address": "shop@example.com\r\nBcc: all@example.com"}, "channels.email.from_address"),
    ({**SES, "access_key_id": "AKIA1"}, "channels.email.secret_access_key"),
    ({**SES, "secret_access_key": "s"}, "channels.email.access_key_id"),
    ({**SES, "access_key_id": 12, "secret_access_key": "s"}, "channels.email.access_key_id"),
    ({**SES, "endpoint_url": "localhost:5000"}, "channels.email.endpoint_url"),
    ({**SES, "configuration_set": "has space"}, "channels.email.configuration_set"),
    ({**SES, "timeout_s": 0}, "channels.email.timeout_s"),
    ({**SES, "timeout_s": True}, "channels.email.timeout_s"),
    ({**SES, "timeout_s": 600}, "channels.email.timeout_s"),
    ({**SES, "configuration_set": "c", "events_topic_arn": "arn:aws:sqs:us-east-1:123456789012:q"},
     "channels.email.events_topic_arn"),
    ({**SES, "events_topic_arn": "arn:aws:sns:us-east-1:123456789012:t"}, "channels.email.configuration_set"),
])
def test_ses_refusals_name_the_field(raw: Any, path: str) -> None:
    assert refusal(ses.parse_settings, raw).path == path


def test_sns_defaults_and_options() -> None:
    assert sns.parse_settings(AWS, "sns") == sns.SnsSettings(region="eu-west-1")
    assert sns.parse_settings(AWS, "sns").sms_type == "Transactional"
    full = sns.parse_settings({**AWS, "provider": "sns", "sender_id": "Kairos1", "sms_type": "Promotional"}, "sns")
    assert (full.sender_id, full.sms_type) == ("Kairos1", "Promotional")


@pytest.mark.parametrize(("raw", "path"), [
    ("sns", "channels.email"),
    ({**AWS, "provider": "ses"}, "channels.email.provider"),
    ({}, "channels.email.region"),
    ({**AWS, "from_address": "x@y.z"}, "channels.email.from_address"),
    ({**AWS, "sms_type": "transactional"}, "channels.email.sms_type"),
    ({**AWS, "sender_id": "TooLongSender"}, "channels.email.sender_id"),
    ({**AWS, "sender_id": "12345"}, "channels.email.sender_id"),
    ({**AWS, "sender_id": "Kai ros"}, "channels.email.sender_id"),
    ({**AWS, "timeout_s": "10"}, "channels.email.timeout_s"),
])
def test_sns_refusals_name_the_field(raw: Any, path: str) -> None:
    assert refusal(sns.parse_settings, raw).path == path


def test_smtp_defaults_follow_security() -> None:
    assert smtp.parse_settings(SMTP, "smtp") == smtp.SmtpSettings(host="smtp.example.com",
                                                                  from_address="shop@example.com")
    assert smtp.parse_settings(SMTP, "smtp").port == 587
    assert smtp.parse_settings({**SMTP, "security": "tls"}, "smtp").port == 465
    assert smtp.parse_settings({**SMTP, "security": "none"}, "smtp").port == 25
    assert smtp.parse_settings({**SMTP, "security": "tls", "port": 2465}, "smtp").port == 2465
    with_auth = smtp.parse_settings({**SMTP, "provider": "smtp", "username": "u", "password": "hunter2"}, "smtp")
    assert with_auth.username == "u" and "hunter2" not in repr(with_auth)
    # Credentials in clear text only to a relay on this machine.
    local = smtp.parse_settings({**SMTP, "host": "127.0.0.1", "security": "none", "username": "u", "password": "p"},
                                "smtp")
    assert local.security == "none"


@pytest.mark.parametrize(("raw", "path"), [
    (None, "channels.email"),
    ({**SMTP, "provider": "ses"}, "channels.email.provider"),
    ({**SMTP, "tls": True}, "channels.email.tls"),
    ({"from_address": "shop@example.com"}, "channels.email.host"),
    ({**SMTP, "host": "smtp example"}, "channels.email.host"),
    ({**SMTP, "port": 0}, "channels.email.port"),
    ({**SMTP, "port": "587"}, "channels.email.port"),
    ({**SMTP, "port": True}, "channels.email.port"),
    ({**SMTP, "security": "ssl"}, "channels.email.security"),
    ({**SMTP, "username": "u"}, "channels.email.password"),
    ({**SMTP, "security": "none", "username": "u", "password": "p"}, "channels.email.security"),
    ({"host": "smtp.example.com"}, "channels.email.from_address"),
    ({**SMTP, "from_address": "Shop <not an address>"}, "channels.email.from_address"),
    ({**SMTP, "timeout_s": -1}, "channels.email.timeout_s"),
])
def test_smtp_refusals_name_the_field(raw: Any, path: str) -> None:
    assert refusal(smtp.parse_settings, raw).path == path


WEBHOOK = {"provider": "webhook", "url": "https://hooks.example.com/k", "secret": "whsec-0123456789abcdef",
           "headers": {"Authorization": "Bearer k-secret", "X-Tenant": "acme"}}


def test_secrets_and_header_values_are_masked_and_restored_on_save() -> None:
    stored = {"providers": {"webhook": WEBHOOK, "email": {**SMTP, "provider": "smtp", "username": "u", "password": "pw"}}}
    shown = masked(stored)
    assert shown["providers"]["webhook"]["secret"] == MASK and shown["providers"]["email"]["password"] == MASK
    assert shown["providers"]["webhook"]["headers"] == {"Authorization": MASK, "X-Tenant": MASK}
    assert "k-secret" not in repr(shown) and "pw" not in repr(shown["providers"]["email"].values())
    # What GET showed comes back with one header changed: the rest is kept.
    shown["providers"]["webhook"]["headers"]["X-Tenant"] = "globex"
    saved = unmasked(shown, stored)
    assert saved["providers"]["webhook"]["headers"] == {"Authorization": "Bearer k-secret", "X-Tenant": "globex"}
    assert saved["providers"]["webhook"]["secret"] == WEBHOOK["secret"] and saved["providers"]["email"]["password"] == "pw"


@pytest.mark.parametrize(("new", "path"), [
    ({"providers": {"webhook": {**WEBHOOK, "secret": MASK}}}, "settings.providers.webhook.secret"),
    ({"providers": {"webhook": {**WEBHOOK, "headers": {"X-New": MASK}}}}, "settings.providers.webhook.headers.X-New"),
    # The stored secret belongs to another provider: it is not carried over to this one.
    ({"providers": {"email": {**SES, "provider": "ses", "access_key_id": "A", "secret_access_key": MASK}}},
     "settings.providers.email.secret_access_key"),
])
def test_a_mask_with_no_stored_secret_behind_it_is_refused(new: dict[str, Any], path: str) -> None:
    stored = {"providers": {"email": {**SMTP, "provider": "smtp", "username": "u", "password": "pw"}}}
    with pytest.raises(SegmentError) as info:
        unmasked(new, stored)
    assert info.value.path == path


@pytest.mark.parametrize("provider", [["fcm"], {}, None, 7])
def test_a_provider_name_that_is_not_text_is_refused_by_name(provider: Any) -> None:
    with pytest.raises(SegmentError) as info:
        parse_delivery_settings({"providers": {"push": {"provider": provider}}})
    assert info.value.path == "settings.providers.push.provider"


@pytest.mark.parametrize("connections", [0, 33, True, "4"])
def test_smtp_connections_are_checked(connections: Any) -> None:
    assert refusal(smtp.parse_settings, {**SMTP, "connections": connections}).path == "channels.email.connections"
