"""Push (FCM) settings as an account stores them: each mistake is named by its field."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kairos.channels.fcm import FcmSettings, parse_settings
from kairos.segments.definition import SegmentError
from tests.loopback.fcm_server import make_service_account

pytestmark = pytest.mark.timeout(30)

# Generating an RSA key takes a while: one for the whole module (no sockets are opened).
ACCOUNT = make_service_account("https://oauth2.googleapis.com/token")


def raw(**changes: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"provider": "fcm", "project_id": "shop-app-1234", "service_account": dict(ACCOUNT)}
    settings.update(changes)
    return {k: v for k, v in settings.items() if v is not None}


_EC_KEY = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def account(**changes: Any) -> dict[str, Any]:
    changed = dict(ACCOUNT, **changes)
    return {k: v for k, v in changed.items() if v is not None}


def test_good_settings_parse_with_defaults() -> None:
    settings = parse_settings(raw(), "channels.push")
    assert settings == FcmSettings("shop-app-1234", ACCOUNT, None, 10.0)
    assert settings.service_account is not ACCOUNT  # a copy: later edits to the input do not leak in


def test_endpoint_and_timeout_are_taken() -> None:
    settings = parse_settings(raw(endpoint="http://127.0.0.1:8080", timeout_s=2), "push")
    assert (settings.endpoint, settings.timeout_s) == ("http://127.0.0.1:8080", 2.0)
    assert isinstance(settings.timeout_s, float)


def test_provider_may_be_left_out() -> None:
    without = raw()
    del without["provider"]
    assert parse_settings(without, "push").project_id == "shop-app-1234"


@pytest.mark.parametrize(("settings", "path", "words"), [
    ("fcm", "push", "must be an object"),
    (raw(provider="apns"), "push.provider", "'fcm'"),
    (raw(api_key="AIza..."), "push.api_key", "is not a field here"),
    (raw(project_id=None), "push.project_id", "Firebase project id"),
    (raw(project_id=""), "push.project_id", "Firebase project id"),
    (raw(project_id="a/b"), "push.project_id", "Firebase project id"),
    (raw(project_id=12), "push.project_id", "Firebase project id"),
    (raw(service_account=None), "push.service_account", "service-account JSON key"),
    (raw(service_account='{"type": "service_account"}'), "push.service_account", "service-account JSON key"),
    (raw(service_account=account(type="authorized_user")), "push.service_account.type", "'service_account'"),
    (raw(service_account=account(client_email=None)), "push.service_account.client_email", "required"),
    (raw(service_account=account(client_email="robot")), "push.service_account.client_email", "email address"),
    (raw(service_account=account(private_key="")), "push.service_account.private_key", "required"),
    (raw(service_account=account(private_key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")),
     "push.service_account.private_key", "PEM RSA private key"),
    (raw(service_account=account(private_key=_EC_KEY)), "push.service_account.private_key", "must be an RSA key"),
    (raw(service_account=account(token_uri=None)), "push.service_account.token_uri", "required"),
    (raw(service_account=account(token_uri="oauth2.googleapis.com/token")), "push.service_account.token_uri", "http(s) URL"),
    (raw(endpoint="ftp://fcm.example.com"), "push.endpoint", "http(s) URL"),
    (raw(endpoint="https://"), "push.endpoint", "http(s) URL"),
    (raw(endpoint="https://fcm.example.com/?x=1"), "push.endpoint", "http(s) URL"),
    (raw(endpoint=8080), "push.endpoint", "http(s) URL"),
    (raw(timeout_s=0), "push.timeout_s", "above 0 and at most 60"),
    (raw(timeout_s=-1.5), "push.timeout_s", "above 0 and at most 60"),
    (raw(timeout_s=61), "push.timeout_s", "above 0 and at most 60"),
    (raw(timeout_s=float("nan")), "push.timeout_s", "above 0 and at most 60"),
    (raw(timeout_s="10"), "push.timeout_s", "above 0 and at most 60"),
    (raw(timeout_s=True), "push.timeout_s", "above 0 and at most 60"),
])
def test_each_mistake_names_its_field(settings: Any, path: str, words: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse_settings(settings, "push")
    assert caught.value.path == path
    assert words in caught.value.message


def test_a_bad_private_key_is_never_echoed() -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END PRIVATE KEY-----\n"
    with pytest.raises(SegmentError) as caught:
        parse_settings(raw(service_account=account(private_key=secret)), "push")
    assert "TOPSECRET" not in str(caught.value)
