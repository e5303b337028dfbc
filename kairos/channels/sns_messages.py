"""Amazon SNS messages posted to an HTTP(S) subscription: which are genuine.

SNS signs each message with a certificate it serves itself. A message is taken only when
its `SigningCertURL` and (to confirm a subscription) `SubscribeURL` are SNS's own (the
`sns_url_pattern` setting: `https://sns.<region>.amazonaws.com/...` unless configured
otherwise, for a private partition or a local stand-in; no redirects are followed), its
signature checks out under that certificate (SignatureVersion 1: SHA1withRSA, 2:
SHA256withRSA) over the fields AWS names for its type, and it is not older than SNS
would still be retrying it (an older one is a replay). The certificate's own chain is
not checked: its address is what vouches for it. A genuine message proves only that SNS
sent it: which topic it came from is for the caller to check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from datetime import datetime
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

NOTIFICATION, SUBSCRIPTION_CONFIRMATION, UNSUBSCRIBE_CONFIRMATION = (
    "Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
# The fields each message type's signature covers, in the order AWS concatenates them.
_SIGNED_FIELDS = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    UNSUBSCRIBE_CONFIRMATION: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
_OPTIONAL = frozenset({"Subject"})
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
CERT_KEPT_S = 3600.0
MAX_CERT_BYTES = 64 * 1024
MAX_CERTS_KEPT = 16
# SNS stops retrying a delivery well within this; an older message is a replay.
MAX_MESSAGE_AGE_S, MAX_CLOCK_SKEW_S = 6 * 3600.0, 900.0


class NotGenuine(ValueError):
    """A message that is malformed, or not provably from SNS."""


def string_to_sign(message: dict[str, Any]) -> bytes:
    kind = message.get("Type")
    if kind not in _SIGNED_FIELDS:
        raise NotGenuine(f"Type must be one of {', '.join(_SIGNED_FIELDS)}")
    parts: list[str] = []
    for name in _SIGNED_FIELDS[kind]:
        value = message.get(name)
        if value is None and name in _OPTIONAL:
            continue
        if not isinstance(value, str):
            raise NotGenuine(f"{name} is missing or not a string")
        parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode()


def signing_key(certificate_pem: bytes) -> rsa.RSAPublicKey:
    try:
        key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    except ValueError as exc:
        raise NotGenuine(f"unreadable signing certificate: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise NotGenuine("the signing certificate does not hold an RSA key")
    return key


def verify(message: dict[str, Any], certificate_pem: bytes) -> None:
    """Raises NotGenuine unless `message` is signed by the key of `certificate_pem`."""
    check_signature(message, signing_key(certificate_pem))


def check_signature(message: dict[str, Any], key: rsa.RSAPublicKey) -> None:
    algorithm = _HASHES.get(str(message.get("SignatureVersion")))
    if algorithm is None:
        raise NotGenuine("SignatureVersion must be 1 or 2")
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NotGenuine(f"unreadable signature: {exc}") from None
    try:
        key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise NotGenuine("the signature does not match the message") from None


def check_age(message: dict[str, Any], now_s: float) -> None:
    """A message older than SNS would still be retrying is a replay."""
    stamp = message.get("Timestamp")
    try:
        sent_s = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        raise NotGenuine("Timestamp is not an ISO 8601 time") from None
    if not -MAX_CLOCK_SKEW_S <= now_s - sent_s <= MAX_MESSAGE_AGE_S:
        raise NotGenuine(f"Timestamp {str(stamp)[:40]} is too old (or in the future): a replay")


class SnsVerifier:
    """Checks messages against SNS's certificates: fetched one at a time, their keys kept
    an hour, at most a few of them."""

    def __init__(self, url_pattern: str, timeout_s: float = 10.0) -> None:
        self._session: aiohttp.ClientSession | None = None  # made on first use, inside the event loop
        self._url = re.compile(url_pattern)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._keys: dict[str, tuple[float, rsa.RSAPublicKey]] = {}
        self._fetching = asyncio.Lock()

    def is_sns_url(self, url: Any) -> bool:
        return isinstance(url, str) and self._url.match(url) is not None

    async def verify(self, message: dict[str, Any]) -> None:
        url = message.get("SigningCertURL")
        if not self.is_sns_url(url) or "?" in url or "#" in url:
            raise NotGenuine("SigningCertURL is not an SNS certificate address")
        check_age(message, time.time())
        check_signature(message, await self._key(url))

    async def confirm(self, message: dict[str, Any]) -> None:
        """Confirms the subscription a genuine SubscriptionConfirmation asks for."""
        url = message.get("SubscribeURL")
        if not self.is_sns_url(url):
            raise NotGenuine("SubscribeURL is not an SNS address")
        async with self._client().get(url, timeout=self._timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise ConnectionError(f"SNS answered {response.status} to the subscription confirmation")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        async with self._fetching:  # one fetch at a time: they are rare, and a flood waits here
            known = self._keys.get(url)
            if known is not None and time.monotonic() - known[0] < CERT_KEPT_S:
                return known[1]
            async with self._client().get(url, timeout=self._timeout, allow_redirects=False) as response:
                if response.status != 200:
                    raise ConnectionError(f"fetching the SNS certificate answered {response.status}")
                pem = b""
                async for chunk in response.content.iter_chunked(8192):
                    pem += chunk
                    if len(pem) > MAX_CERT_BYTES:
                        raise NotGenuine("the SNS certificate is too large")
            key = signing_key(pem)  # only a whole, readable certificate is kept
            if len(self._keys) >= MAX_CERTS_KEPT:
                self._keys.pop(min(self._keys, key=lambda u: self._keys[u][0]))
            self._keys[url] = (time.monotonic(), key)
            return key
