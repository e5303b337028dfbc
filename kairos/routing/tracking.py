"""Open and click tracking for email, in-app and push messages.

Before an email leaves, each http(s) link in its HTML is pointed at the gateway's click
endpoint (`/t/c/<token>`), which records `Notification Clicked` and redirects to the
link, and a 1x1 pixel (`/t/o/<token>`) records `Notification Viewed` when the mail is
shown. An in-app message gets the same two addresses as `view_url` and `click_url`, for
the app to call when it shows the message and when the user taps it, and a push carries
them in its data payload with a third, for the app to report the notification's arrival.

A token is the message's description (its user, send id, source) and, for a click, the
link, sealed with AES-GCM under a key the deployment keeps in Redis: the gateway needs no
lookup to read it, no one can forge one (or turn the click endpoint into an open
redirect), and the user's identifier, often an email address, is not readable in a URL
that proxies and mail scanners log.
"""

from __future__ import annotations

import base64
import binascii
import html
import os
import re
from typing import Any

import msgspec
import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kairos import keys
from kairos.routing.delivery_events import SentMessage

OPEN_PATH, CLICK_PATH, DELIVERED_PATH = "/t/o/", "/t/c/", "/t/d/"
MAX_TOKEN_CHARS = 8192
_NONCE_BYTES = 12
_AAD = b"kairos-tracking-1"  # a later token format gets another, so old tokens fail cleanly

_HREF = re.compile(r"""(<a\b[^>]*?\shref\s*=\s*)(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


class TrackedLink(msgspec.Struct, array_like=True, frozen=True):
    sent: SentMessage
    partition: int  # the user's: their open and click events queue with their other delivery events
    url: str | None = None  # a click: where the reader goes next


class BadToken(ValueError):
    """A tracking token that was not made by this deployment (or was cut short)."""


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(TrackedLink).decode


async def tracking_key(client: aioredis.Redis) -> bytes:
    """The deployment's token key: made by whoever asks first, the same for every gateway
    and router after that."""
    await client.set(keys.TRACKING_KEY, AESGCM.generate_key(bit_length=256), nx=True)
    key = await client.get(keys.TRACKING_KEY)
    assert key is not None  # set just above, never deleted
    return bytes(key)


class Tracker:
    def __init__(self, key: bytes, base_url: str) -> None:
        self._aead = AESGCM(key)
        self.base_url = base_url.rstrip("/")

    def token(self, link: TrackedLink) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, _encode(link), _AAD)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def read(self, token: str) -> TrackedLink:
        if not 0 < len(token) <= MAX_TOKEN_CHARS:
            raise BadToken("the tracking token is empty or too long")
        try:
            sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            return _decode(self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _AAD))
        except (binascii.Error, ValueError, InvalidTag, msgspec.DecodeError):
            raise BadToken("the tracking token is not valid (cut short, or not made by this deployment)") from None

    def _url(self, path: str, token: str, base_url: str | None) -> str:
        return f"{(base_url or self.base_url).rstrip('/')}{path}{token}"

    def open_url(self, link: TrackedLink, base_url: str | None = None) -> str:
        return self._url(OPEN_PATH, self.token(link), base_url)

    def click_url(self, link: TrackedLink, url: str | None, base_url: str | None = None) -> str:
        return self._url(CLICK_PATH, self.token(msgspec.structs.replace(link, url=url)), base_url)

    def email(self, message: dict[str, Any], link: TrackedLink, opens: bool, clicks: bool,
              base_url: str | None = None) -> dict[str, Any]:
        """The email with its HTML links tracked and an open pixel added; plain text is
        left as written (a rewritten link there is a long opaque URL a reader sees)."""
        body = message.get("html")
        if not isinstance(body, str) or not (opens or clicks):
            return message
        if clicks:
            def tracked(match: re.Match[str]) -> str:
                target = html.unescape(match.group(2) if match.group(2) is not None else match.group(3))
                if not target.lower().startswith(("http://", "https://")):
                    return match.group(0)  # mailto:, tel:, #anchors, template leftovers
                return f'{match.group(1)}"{html.escape(self.click_url(link, target, base_url))}"'

            body = _HREF.sub(tracked, body)
        if opens:
            pixel = (f'<img src="{html.escape(self.open_url(link, base_url))}" width="1" height="1" alt="" '
                     'style="display:none;border:0">')
            ends = list(_BODY_END.finditer(body))
            body = body[:ends[-1].start()] + pixel + body[ends[-1].start():] if ends else body + pixel
        return {**message, "html": body}

    def in_app(self, message: dict[str, Any], link: TrackedLink, opens: bool, clicks: bool,
               base_url: str | None = None) -> dict[str, Any]:
        """The message with the addresses the app calls when it shows it (`view_url`) and
        when the user taps it (`click_url`, which redirects to the message's own `url`)."""
        tracked = dict(message)
        if opens:
            tracked["view_url"] = self.open_url(link, base_url)
        if clicks:
            target = message.get("url")
            tracked["click_url"] = self.click_url(link, target if isinstance(target, str) else None, base_url)
        return tracked

    def push(self, message: dict[str, Any], link: TrackedLink, opens: bool, clicks: bool,
             base_url: str | None = None) -> dict[str, Any]:
        """The push with, in its data payload, the addresses the app calls when the
        notification arrives (`kairos_delivered_url`: FCM itself reports no delivery), is
        shown (`kairos_view_url`) and is tapped (`kairos_click_url`)."""
        # One token serves all three (a push click has no link to carry): FCM allows 4 KB.
        token = self.token(link)
        data = dict(message.get("data") or {})
        data["kairos_delivered_url"] = self._url(DELIVERED_PATH, token, base_url)
        if opens:
            data["kairos_view_url"] = self._url(OPEN_PATH, token, base_url)
        if clicks:
            data["kairos_click_url"] = self._url(CLICK_PATH, token, base_url)
        return {**message, "data": data}
