"""Webhook signatures and settings, without sockets: what a receiver can rely on."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from kairos.channels.webhook import WebhookSettings, parse_settings, sign, verify
from kairos.segments.definition import SegmentError

pytestmark = pytest.mark.timeout(30)

SECRET = "whsec-0123456789abcdef"
BODY = b'{"id":"s-1","message":{"title":"Hi"}}'
T = 1_790_000_000


def test_a_signature_verifies_with_the_same_secret_body_and_time() -> None:
    header = sign(SECRET, T, BODY)
    assert verify(SECRET, header, BODY, now_s=T)
    assert verify(SECRET, header, BODY, now_s=T + 299.5) and verify(SECRET, header, BODY, now_s=T - 300)


def test_the_header_is_the_documented_scheme_so_other_languages_can_check_it() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, T, BODY) == f"t={T},v1={expected}"


def test_a_tampered_body_fails() -> None:
    header = sign(SECRET, T, BODY)
    assert not verify(SECRET, header, BODY.replace(b"Hi", b"Ho"), now_s=T)
    assert not verify(SECRET, header, BODY + b" ", now_s=T)


def test_a_wrong_secret_fails() -> None:
    assert not verify(SECRET + "x", sign(SECRET, T, BODY), BODY, now_s=T)


def test_a_changed_timestamp_fails_even_within_tolerance() -> None:
    signature = sign(SECRET, T, BODY).split(",")[1]
    assert not verify(SECRET, f"t={T + 1},{signature}", BODY, now_s=T)


def test_stale_and_future_timestamps_fail_beyond_the_tolerance() -> None:
    header = sign(SECRET, T, BODY)
    assert not verify(SECRET, header, BODY, now_s=T + 301)
    assert not verify(SECRET, header, BODY, now_s=T - 301)
    assert verify(SECRET, header, BODY, now_s=T + 3000, tolerance_s=3600)
    assert not verify(SECRET, header, BODY, now_s=T + 11, tolerance_s=10)


def test_several_v1_signatures_pass_if_one_matches_as_during_secret_rotation() -> None:
    old = sign("an-older-secret-value", T, BODY).split(",")[1]
    assert verify(SECRET, f"{sign(SECRET, T, BODY)},{old}", BODY, now_s=T)
    assert verify(SECRET, f"t={T},{old},{sign(SECRET, T, BODY).split(',')[1]},v2=future", BODY, now_s=T)


@pytest.mark.parametrize("header", [
    None, "", "garbage", "t=,v1=", f"t={T}", f"v1={'0' * 64}", f"t=abc,v1={'0' * 64}",
    f"t={T},v1=xyz", f"t={T},v1={'A' * 64}", f"t={T},t={T},v1={'0' * 64}", "t=" + "9" * 5000 + ",v1=00",
    f"t={T},v1=é{'0' * 63}", f"t={T},v1", ",,,", f"t=-{T},v1={'0' * 64}", 12345,
])
def test_malformed_headers_fail_without_raising(header: Any) -> None:
    assert verify(SECRET, header, BODY, now_s=T) is False


def test_malformed_header_variants_of_a_good_signature_fail() -> None:
    good = sign(SECRET, T, BODY)
    assert not verify(SECRET, good.upper(), BODY, now_s=T)
    assert not verify(SECRET, good[:-1], BODY, now_s=T)
    assert verify(SECRET, good.replace(",", " , "), BODY, now_s=T)  # whitespace around parts is harmless


VALID = {"url": "https://hooks.example.com/kairos", "secret": SECRET}


def test_parse_settings_accepts_the_full_form_and_defaults() -> None:
    settings = parse_settings({**VALID, "provider": "webhook", "timeout_s": 2, "headers": {"X-Api-Key": "k-1"}}, "channels.webhook")
    assert settings == WebhookSettings("https://hooks.example.com/kairos", SECRET, 2.0, {"X-Api-Key": "k-1"})
    assert isinstance(settings.timeout_s, float)
    assert parse_settings(VALID, "w") == WebhookSettings(VALID["url"], SECRET, 5.0, {})


def test_the_secret_stays_out_of_the_repr() -> None:
    assert SECRET not in repr(parse_settings(VALID, "w"))


@pytest.mark.parametrize("raw, field, words", [
    ("https://x", "w", "must be an object"),
    ({"secret": SECRET}, "w.url", "required"),
    ({"url": VALID["url"]}, "w.secret", "required"),
    ({**VALID, "provider": "fcm"}, "w.provider", "'webhook'"),
    ({**VALID, "retries": 3}, "w.retries", "not a field"),
    ({**VALID, "url": "ftp://example.com/x"}, "w.url", "http or https"),
    ({**VALID, "url": "/relative/path"}, "w.url", "http or https"),
    ({**VALID, "url": "https://"}, "w.url", ""),
    ({**VALID, "url": " https://example.com"}, "w.url", "http or https"),
    ({**VALID, "url": 42}, "w.url", "http or https"),
    ({**VALID, "url": "https://user:pw@example.com/"}, "w.url", "credentials"),
    ({**VALID, "secret": "short"}, "w.secret", "at least 16"),
    ({**VALID, "secret": 1234567890123456789}, "w.secret", "at least 16"),
    ({**VALID, "timeout_s": 0}, "w.timeout_s", "above 0"),
    ({**VALID, "timeout_s": -1.5}, "w.timeout_s", "above 0"),
    ({**VALID, "timeout_s": 600}, "w.timeout_s", "at most 60"),
    ({**VALID, "timeout_s": "5"}, "w.timeout_s", "number"),
    ({**VALID, "timeout_s": True}, "w.timeout_s", "number"),
    ({**VALID, "headers": ["X-Api-Key"]}, "w.headers", "object"),
    ({**VALID, "headers": {"Host": "evil.example"}}, "w.headers.Host", "cannot be overridden"),
    ({**VALID, "headers": {"content-length": "0"}}, "w.headers.content-length", "cannot be overridden"),
    ({**VALID, "headers": {"Transfer-Encoding": "chunked"}}, "w.headers.Transfer-Encoding", "cannot be overridden"),
    ({**VALID, "headers": {"Connection": "close"}}, "w.headers.Connection", "cannot be overridden"),
    ({**VALID, "headers": {"Kairos-Signature": "t=1,v1=0"}}, "w.headers.Kairos-Signature", "cannot be overridden"),
    ({**VALID, "headers": {"kairos-delivery-id": "x"}}, "w.headers.kairos-delivery-id", "cannot be overridden"),
    ({**VALID, "headers": {"X Api": "k"}}, "w.headers.X Api", "header name"),
    ({**VALID, "headers": {"X-Api-Key": "k\r\nX-Evil: 1"}}, "w.headers.X-Api-Key", "printable ASCII"),
    ({**VALID, "headers": {"X-Api-Key": 7}}, "w.headers.X-Api-Key", "string"),
    ({**VALID, "headers": {"X-Key": "a", "x-key": "b"}}, "w.headers.x-key", "twice"),
])
def test_parse_settings_names_the_bad_field(raw: Any, field: str, words: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse_settings(raw, "w")
    assert caught.value.path == field and words in caught.value.message


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(SegmentError, match="at least 16"):
        WebhookSettings("https://example.com", "short")
    with pytest.raises(SegmentError, match="cannot be overridden"):
        WebhookSettings("https://example.com", SECRET, headers={"Host": "x"})
