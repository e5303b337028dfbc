"""An SMTP server on 127.0.0.1 for tests (aiosmtpd, in a thread with its own loop): it
records what it accepted, and misbehaves on request (refuse a recipient with any reply,
e.g. 550 or 451; answer RCPT slowly; close every open connection as an idle server would).

    with SmtpLoopback() as server:            # or start()/stop(); module-scoped fixtures
        ... server.port, server.messages, server.refuse("x@y.z", "550 5.1.1 No such user")
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    peer: tuple[str, int]  # the client's address and port: the same port means the same connection
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage  # parsed with the default (modern) policy


class _Handler:
    """aiosmtpd hooks. They run on the server's thread; tests read from theirs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}
        self.rcpt_delay_s = 0.0
        self.connections: list[SMTP] = []

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.connections.append(server)
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if self.rcpt_delay_s:
            await asyncio.sleep(self.rcpt_delay_s)
        with self.lock:
            reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        peer = session.peer if isinstance(session.peer, tuple) else ("", 0)
        with self.lock:
            self.received.append(Received((str(peer[0]), int(peer[1])), str(envelope.mail_from),
                                          list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"


class _Authenticator:
    def __init__(self, username: str, password: str) -> None:
        self.expected = LoginPassword(username.encode(), password.encode())

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        # handled=False: aiosmtpd then answers 535 itself (True would leave the client waiting).
        return AuthResult(success=auth_data == self.expected, handled=False)


class _Controller(Controller):
    def _trigger_server(self) -> None:
        # Bound to port 0: learn the port the OS chose before the base class connects to it.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpLoopback:
    """`auth=(username, password)` makes AUTH available (over plain text: loopback only)."""

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self._handler = _Handler()
        kwargs: dict[str, Any] = {}
        if auth is not None:
            kwargs = {"authenticator": _Authenticator(*auth), "auth_require_tls": False}
        self._controller = _Controller(self._handler, hostname=HOST, port=0, **kwargs)
        self.host = HOST
        self.port = 0

    def start(self) -> SmtpLoopback:
        self._controller.start()
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpLoopback:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def messages(self) -> list[Received]:
        with self._handler.lock:
            return list(self._handler.received)

    def refuse(self, address: str, reply: str) -> None:
        """Answer RCPT TO for this address with `reply`, e.g. '550 5.1.1 No such user'."""
        with self._handler.lock:
            self._handler.rcpt_replies[address] = reply

    def answer_slowly(self, delay_s: float) -> None:
        self._handler.rcpt_delay_s = delay_s

    def drop_connections(self) -> None:
        """Close every open connection from the server's side, as an idle timeout would."""
        with self._handler.lock:
            servers, self._handler.connections = self._handler.connections, []
        done = threading.Event()

        def close_all() -> None:
            for server in servers:
                if server.transport is not None:
                    server.transport.close()
            done.set()

        self._controller.loop.call_soon_threadsafe(close_all)
        done.wait(5)

    def reset(self) -> None:
        with self._handler.lock:
            self._handler.received.clear()
            self._handler.rcpt_replies.clear()
            self._handler.rcpt_delay_s = 0.0
