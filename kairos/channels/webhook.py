"""The webhook channel: POST each message as signed JSON to one URL the account configured.

The URL comes only from the account's settings, never from the journey or the profile
(`Delivery.address` is ignored), so a journey author cannot point Kairos at arbitrary hosts.

What a receiver gets
--------------------
    POST <url>
    Content-Type: application/json
    Kairos-Delivery-Id: <send id>         same on every retry of one send: dedupe on it
    Kairos-Signature: t=<unix seconds>,v1=<64 lowercase hex chars>
    <extra static headers from the settings, e.g. an API key>

    {"id": "<send id>", "account": "...", "user": "...", "channel": "webhook",
     "message": {...the rendered message...}, "sent_at": <epoch milliseconds>}

Verifying a request (any language)
----------------------------------
1. Read the raw request body as bytes; do not re-serialise the parsed JSON.
2. Split the Kairos-Signature header on ",", each part on the first "=": take `t` (decimal
   unix seconds) and every `v1` (there may be several, e.g. while a secret is rotated).
3. signed = ASCII(t) + b"." + raw body
   expected = lowercase hex of HMAC-SHA256(key = UTF-8(secret), message = signed)
4. Accept if some `v1` equals `expected` under a constant-time comparison and
   |now - t| <= 300 seconds (the tolerance bounds how long a captured request can be replayed).
`sign` and `verify` below are the reference implementation.

Outcomes: 2xx delivered (provider id: the receiver's X-Request-Id); 408, 425, 429, 5xx,
connection failures and timeouts transient; other 4xx rejected. Redirects are not followed,
since a receiver redirecting elsewhere would steer signed traffic to a host nobody
configured: they are rejected, and the account should configure the final URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from typing import Any, Mapping

import aiohttp
import msgspec
from yarl import URL

from kairos.channels.base import Delivery, Outcome, delivered, rejected, transient
from kairos.channels.provider_common import settings_fields, timeout_field
from kairos.segments.definition import SegmentError

SIGNATURE_HEADER = "Kairos-Signature"
DELIVERY_ID_HEADER = "Kairos-Delivery-Id"
DEFAULT_TOLERANCE_S = 300
MIN_SECRET_LENGTH = 16
BODY_CAP = 4096  # enough for an error message; a huge error page must not fill memory
DETAIL_CHARS = 200

# Hop-by-hop headers belong to the connection, not the message; the rest are ours to set
# because the signature or the framing depends on them.
_RESERVED_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "expect", "host", "content-length",
    "content-type", "content-encoding",
})
_RESERVED_PREFIX = "kairos-"  # room for headers we add later without breaking accounts
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")  # no CR/LF: a header must not smuggle another
_TIMESTAMP = re.compile(r"\d{1,12}")  # bounded so int() never meets a hostile megabyte of digits
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_TRANSIENT_4XX = frozenset({408, 425, 429})
_FIELDS = {"url", "secret", "timeout_s", "headers"}


class WebhookSettings(msgspec.Struct, frozen=True):
    url: str
    secret: str
    timeout_s: float = 5.0
    headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        # Settings built in code (not through parse_settings) get the same checks.
        _check_url(self.url, "webhook.url")
        _check_secret(self.secret, "webhook.secret")
        timeout_field({"timeout_s": self.timeout_s}, "webhook", self.timeout_s)
        _check_headers(self.headers, "webhook.headers")

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks; the secret and header values must not.
        return f"WebhookSettings(url={self.url!r}, secret='***', timeout_s={self.timeout_s!r}, headers={sorted(self.headers)!r})"


def parse_settings(raw: Any, path: str) -> WebhookSettings:
    """An account's webhook settings from JSON; SegmentError names the offending field."""
    raw = settings_fields(raw, _FIELDS, path, "webhook")
    for name in ("url", "secret"):
        if name not in raw:
            raise SegmentError(f"{path}.{name}", "is required")
    url, secret = raw["url"], raw["secret"]
    timeout_s = timeout_field(raw, path, 5.0)
    headers = raw.get("headers", {})
    _check_url(url, f"{path}.url")
    _check_secret(secret, f"{path}.secret")
    _check_headers(headers, f"{path}.headers")
    return WebhookSettings(url, secret, float(timeout_s), dict(headers))


def _check_url(url: Any, path: str) -> None:
    if not isinstance(url, str) or not url or url != url.strip():
        raise SegmentError(path, "must be an http or https URL")
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise SegmentError(path, f"is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise SegmentError(path, "must be an absolute http or https URL with a host")
    if parsed.user is not None or parsed.password is not None:
        raise SegmentError(path, "must not carry credentials; put an API key in 'headers' instead")


def _check_secret(secret: Any, path: str) -> None:
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
        raise SegmentError(path, f"must be a string of at least {MIN_SECRET_LENGTH} characters")


def _check_headers(headers: Any, path: str) -> None:
    if not isinstance(headers, dict):
        raise SegmentError(path, "must be an object of header names to string values")
    seen: set[str] = set()
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise SegmentError(f"{path}.{name}", "is not a valid header name")
        lower = name.lower()
        if lower in _RESERVED_HEADERS or lower.startswith(_RESERVED_PREFIX):
            raise SegmentError(f"{path}.{name}", "is set by Kairos or by the connection and cannot be overridden")
        if lower in seen:
            raise SegmentError(f"{path}.{name}", "is given twice (header names are case-insensitive)")
        seen.add(lower)
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise SegmentError(f"{path}.{name}", "must be a string of printable ASCII characters")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The Kairos-Signature header value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={int(timestamp)},v1={_digest(secret, int(timestamp), body)}"


def verify(secret: str, header: str | None, body: bytes, now_s: float,
           tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """Whether `header` is a valid signature of `body` made within `tolerance_s` of `now_s`.
    Never raises: a malformed header is simply not valid."""
    if not isinstance(header, str) or not isinstance(body, (bytes, bytearray, memoryview)):
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not _TIMESTAMP.fullmatch(value):
                return False
            timestamp = int(value)
        elif key == "v1" and _HEX_DIGEST.fullmatch(value):
            candidates.append(value)
        # Other keys are future schemes (v2=...) that this verifier does not know: skip them.
    if timestamp is None or not candidates or abs(now_s - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, timestamp, bytes(body)).encode()
    # Compare against every candidate so timing does not reveal which one matched.
    matches = [hmac.compare_digest(expected, candidate.encode()) for candidate in candidates]
    return any(matches)


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()


class WebhookProvider:
    channel = "webhook"

    def __init__(self, settings: WebhookSettings) -> None:
        self._settings = settings
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> aiohttp.ClientSession:
        # A session binds to the loop it is created in, so it is made on first use rather
        # than in __init__ (which may run before any loop, e.g. in an actor's constructor).
        loop = asyncio.get_running_loop()
        if self._session is not None and not self._session.closed:
            if loop is not self._loop:
                raise RuntimeError("WebhookProvider used from two event loops; make one per loop")
            return self._session
        # No cookie jar: a receiver's cookies must not leak from one delivery into the next.
        self._session = aiohttp.ClientSession(timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar())
        self._loop = loop
        return self._session

    async def send(self, delivery: Delivery) -> Outcome:
        now_ns = time.time_ns()
        payload = {"id": delivery.send_id, "account": delivery.account, "user": delivery.user,
                   "channel": self.channel, "message": delivery.message, "sent_at": now_ns // 1_000_000}
        try:
            body = msgspec.json.encode(payload)
        except (TypeError, msgspec.EncodeError) as exc:
            return rejected(f"message is not JSON-encodable: {exc}")
        headers = {**self._settings.headers, "Content-Type": "application/json",
                   SIGNATURE_HEADER: sign(self._settings.secret, now_ns // 1_000_000_000, body),
                   DELIVERY_ID_HEADER: delivery.send_id}
        try:
            async with self._client().post(self._settings.url, data=body, headers=headers,
                                           allow_redirects=False) as response:
                head = await _read_capped(response.content, BODY_CAP)
                return _outcome(response.status, response.headers, head)
        except TimeoutError:  # before ClientError: aiohttp's timeouts are both
            return transient(f"no answer within {self._settings.timeout_s:g}s")
        except aiohttp.ClientConnectorError as exc:
            return transient(f"cannot connect: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return transient(f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to `limit` bytes of the body. The status already decided the outcome, so a body
    that breaks off or stalls just leaves the detail shorter."""
    data = bytearray()
    try:
        while len(data) < limit:
            chunk = await content.read(limit - len(data))
            if not chunk:
                break
            data += chunk
    except (aiohttp.ClientError, TimeoutError):
        pass
    return bytes(data)


def _outcome(status: int, headers: Mapping[str, str], head: bytes) -> Outcome:
    if 200 <= status < 300:
        return delivered(headers.get("X-Request-Id") or None, final=True)
    if 300 <= status < 400:
        return rejected(f"HTTP {status}: redirect to {headers.get('Location', '(no Location)')!r} not followed; "
                        "configure the final URL")
    text = " ".join(head.decode("utf-8", "replace").split())[:DETAIL_CHARS]
    detail = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status in _TRANSIENT_4XX or status >= 500:
        retry_after = headers.get("Retry-After")
        return transient(f"{detail} (Retry-After: {retry_after})" if retry_after else detail)
    # The URL is account configuration, not a profile address, so it is never `unreachable`.
    return rejected(detail)
