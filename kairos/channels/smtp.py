"""Email through an SMTP server (a relay such as Postfix, or a provider's submission port),
with aiosmtplib: asynchronous, so no worker thread.

A small pool of connections (`connections`, 4 by default), each kept open, used by one
send at a time and reconnected when it is gone. A connection per send would pay TCP +
TLS + EHLO + AUTH, several round trips, for every message. Each send, once it holds a
connection, is bounded by `timeout_s`: a slow server comes back TRANSIENT, which is the
router's cue to back off; waiting for a free connection is not counted against it.

A server may close an idle connection and we learn so only on the next command: a send on
a reused connection that finds it closed gets one more try on a fresh one. (Had the server
dropped it between the end of DATA and its reply, the mail could arrive twice; the
Message-ID is derived from the send id, so mail systems can tell the copies apart, as
they can for the router's own retries.)
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import aiosmtplib
import msgspec

from kairos.channels.base import DEFAULT_TIMEOUT_S, Delivery, Outcome, delivered, rejected, transient
from kairos.channels.provider_common import (
    EmailContent, choice_field, email_content, redacted_repr, secret_pair, sender_field, settings_fields,
    single_line, text_field, timeout_field,
)
from kairos.segments.definition import SegmentError

SECURITY = ("starttls", "tls", "none")
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
SEND_ID_HEADER = "X-Kairos-Send-Id"
DEFAULT_CONNECTIONS, MAX_CONNECTIONS = 4, 32
# RFC 3463 enhanced status, e.g. "5.1.1 User unknown".
_ENHANCED = re.compile(r"\s*[245]\.(\d{1,3})\.(\d{1,3})\b")


class SmtpSettings(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    from_address: str  # 'a@b.c' or 'Name <a@b.c>'
    port: int = 587
    username: str | None = None  # None (with the password): no AUTH
    password: str | None = None
    security: str = "starttls"  # "starttls" (required, not opportunistic) | "tls" | "none"
    timeout_s: float = DEFAULT_TIMEOUT_S
    connections: int = DEFAULT_CONNECTIONS  # at most this many sends at once

    def __repr__(self) -> str:
        return redacted_repr(self, frozenset({"password"}))


def parse_settings(raw: Any, path: str = "smtp") -> SmtpSettings:
    fields = settings_fields(raw, {"host", "port", "username", "password", "security", "from_address",
                                   "timeout_s", "connections"}, path, "smtp")
    host = text_field(fields, "host", path, required=True, pattern=r"[A-Za-z0-9.:_-]{1,253}",
                      hint="a host name or IP address", max_len=253)
    assert host is not None
    security = choice_field(fields, "security", path, SECURITY, "starttls")
    port = fields.get("port", DEFAULT_PORTS[security])
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise SegmentError(f"{path}.port", "must be a port number from 1 to 65535")
    connections = fields.get("connections", DEFAULT_CONNECTIONS)
    if isinstance(connections, bool) or not isinstance(connections, int) or not 1 <= connections <= MAX_CONNECTIONS:
        raise SegmentError(f"{path}.connections", f"must be a whole number from 1 to {MAX_CONNECTIONS}")
    username, password = secret_pair(fields, "username", "password", path)
    if username is not None and security == "none" and not _is_loopback(host):
        raise SegmentError(f"{path}.security", "'none' would send the password in clear text: use starttls or tls")
    return SmtpSettings(host=host, port=port, username=username, password=password, security=security,
                        from_address=sender_field(fields, "from_address", path),
                        timeout_s=timeout_field(fields, path, DEFAULT_TIMEOUT_S), connections=connections)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_message(content: EmailContent, send_id: str) -> EmailMessage:
    """multipart/alternative when there are both a text and an html body."""
    message = EmailMessage()
    message["From"] = content.sender
    message["To"] = content.recipient
    message["Subject"] = content.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id(send_id, content.sender_address)
    message[SEND_ID_HEADER] = single_line(send_id)
    if content.text is not None:
        message.set_content(content.text)
        if content.html is not None:
            message.add_alternative(content.html, subtype="html")
    else:
        message.set_content(content.html or "", subtype="html")
    return message


def message_id(send_id: str, sender: str) -> str:
    # The same for every retry of one send, so a receiver can recognise a duplicate.
    domain = sender.rpartition("@")[2]
    if not domain.isascii():
        domain = "kairos.invalid"
    return f"<{hashlib.sha256(send_id.encode()).hexdigest()[:32]}.kairos@{domain}>"


class _Connection:
    """One SMTP connection, used by one send at a time (the pool hands it out)."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings
        self._client: aiosmtplib.SMTP | None = None

    async def send(self, message: EmailMessage, content: EmailContent) -> Outcome:
        reused = self._client is not None and self._client.is_connected
        outcome, dropped = await self._attempt(message, content)
        if dropped and reused:
            outcome, _ = await self._attempt(message, content)
        return outcome

    async def _attempt(self, message: EmailMessage, content: EmailContent) -> tuple[Outcome, bool]:
        """One try: the outcome, and whether the server had dropped the connection."""
        keep = False  # whether the connection is still in a known, usable state afterwards
        try:
            client = await self._connected()
            await client.send_message(message, sender=content.sender_address, recipients=[content.recipient])
            keep = True
            return delivered(str(message["Message-ID"])), False
        except aiosmtplib.SMTPServerDisconnected as exc:
            return transient(f"smtp: {exc}"), True
        except aiosmtplib.SMTPRecipientsRefused as exc:
            keep = True  # aiosmtplib has sent RSET: ready for the next message
            refused = exc.recipients[0]
            return _response_outcome(refused.code, refused.message, recipient=True), False
        except aiosmtplib.SMTPResponseException as exc:
            keep = exc.code != 421  # 421: the server is closing the connection
            return _response_outcome(exc.code, exc.message, recipient=False), False
        except OSError as exc:
            # Connection refused or reset, DNS, TLS handshake, connect and read timeouts
            # (aiosmtplib's connect and timeout errors are OSErrors too).
            return transient(f"smtp: {exc}"), False
        except aiosmtplib.SMTPException as exc:
            # What is left is the server and our settings disagreeing, which no retry mends:
            # STARTTLS or AUTH required but not offered, an SMTPUTF8 address it cannot take.
            return rejected(f"smtp: {exc}"), False
        finally:
            # Also on cancellation (the timeout): a half-done exchange leaves the connection unusable.
            if not keep:
                self.drop()

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is None:
            s = self._settings
            # One client object for the connection's lifetime: it reconnects, and keeps the
            # local host name it looked up for EHLO.
            self._client = aiosmtplib.SMTP(
                hostname=s.host, port=s.port, username=s.username, password=s.password, timeout=s.timeout_s,
                use_tls=s.security == "tls", start_tls=s.security == "starttls")
        if not self._client.is_connected:
            self._client.close()
            await self._client.connect()
        return self._client

    def drop(self) -> None:
        if self._client is not None:
            self._client.close()

    async def quit(self) -> None:
        if self._client is not None and self._client.is_connected:
            try:
                async with asyncio.timeout(self._settings.timeout_s):
                    await self._client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass  # only a courtesy to the server
        self.drop()


class SmtpProvider:
    channel = "email"

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings
        # Last in, first out: a trickle of mail keeps using one warm connection, and the
        # others open only when sends overlap.
        self._idle: asyncio.LifoQueue[_Connection] = asyncio.LifoQueue()
        for _ in range(settings.connections):
            self._idle.put_nowait(_Connection(settings))
        self._closed = False

    async def send(self, delivery: Delivery) -> Outcome:
        content = email_content(delivery, self._settings.from_address)
        if isinstance(content, Outcome):
            return content
        message = build_message(content, delivery.send_id)
        connection = await self._idle.get()
        try:
            if self._closed:
                # Closed because its settings changed: the router's retry finds the new one.
                return transient("smtp: provider closed")
            # The timeout starts once a connection is ours: waiting behind other sends of
            # a healthy server is not the server failing.
            async with asyncio.timeout(self._settings.timeout_s):
                return await connection.send(message, content)
        except TimeoutError:
            return transient(f"smtp: no answer within {self._settings.timeout_s:g}s")
        finally:
            self._idle.put_nowait(connection)

    async def close(self) -> None:
        self._closed = True
        connections = [await self._idle.get() for _ in range(self._settings.connections)]
        try:
            await asyncio.gather(*(c.quit() for c in connections))
        finally:
            for connection in connections:
                self._idle.put_nowait(connection)


def _response_outcome(code: int, message: str, recipient: bool) -> Outcome:
    detail = f"smtp {code}: {message}"
    if code < 500:
        return transient(detail)
    return rejected(detail, unreachable=recipient and _mailbox_dead(code, message))


def _mailbox_dead(code: int, message: str) -> bool:
    """Only a verdict on the mailbox itself: not a policy refusal (5.7.x, e.g. our IP on a
    block list) nor a full mailbox (5.2.2), which say nothing lasting about the address."""
    enhanced = _ENHANCED.match(message)
    if enhanced is not None:
        subject, detail = enhanced.groups()
        return (subject == "1" and detail not in ("7", "8")) or (subject, detail) == ("2", "1")
    return code in (550, 551, 553)
