"""A webhook receiver on 127.0.0.1 for tests: it checks Kairos signatures with the same
`verify` a real receiver would use, records what it accepted, and misbehaves on request
(fail the next N calls with a status, answer slowly).

Two ways to run it:
- `async with WebhookReceiver(secret) as receiver:` serves on the test's own event loop;
- `with ThreadedWebhookReceiver(secret) as receiver:` (or start()/stop()) serves from a
  thread with its own loop, so Ray actors in other processes can call it while the test's
  loop is busy or blocked in ray.get.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from kairos.channels.webhook import DELIVERY_ID_HEADER, SIGNATURE_HEADER, verify

# Long enough for a slow handler to notice the stop, short enough to keep teardown quick.
_SHUTDOWN_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Call:
    """One request whose signature verified, and what the receiver answered."""

    headers: CIMultiDict[str]
    body: bytes
    json: Any  # None when the body was not JSON
    status: int

    @property
    def delivery_id(self) -> str | None:
        return self.headers.get(DELIVERY_ID_HEADER)


@dataclass
class _Script:
    """Misbehaviour still to come, consumed one call at a time."""

    failures: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0
    slow_calls: int | None = None  # None: every call is slow


class WebhookReceiver:
    def __init__(self, secret: str, path: str = "/hook", tolerance_s: float = 300) -> None:
        self.secret = secret
        self.path = path
        self.tolerance_s = tolerance_s
        # Handlers run on the server's loop, tests read from theirs (maybe another thread).
        self._cond = threading.Condition()
        self._calls: list[Call] = []
        self._refused = 0
        self._script = _Script()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("receiver not started")
        return f"http://127.0.0.1:{self._port}{self.path}"

    @property
    def calls(self) -> list[Call]:
        """Every verified call, in arrival order, including those answered with a failure."""
        with self._cond:
            return list(self._calls)

    @property
    def delivered(self) -> list[Call]:
        return [call for call in self.calls if 200 <= call.status < 300]

    @property
    def refused(self) -> int:
        """How many calls were answered 401 for a missing or bad signature."""
        with self._cond:
            return self._refused

    def fail_next(self, count: int, status: int, body: str = "", headers: dict[str, str] | None = None) -> None:
        """Answer the next `count` verified calls with `status` (e.g. 307 plus a Location)."""
        with self._cond:
            self._script.failures.extend([(status, body or f"injected {status}", dict(headers or {}))] * count)

    def slow(self, delay_s: float, count: int | None = None) -> None:
        """Wait `delay_s` before answering the next `count` calls (all calls if None)."""
        with self._cond:
            self._script.delay_s, self._script.slow_calls = delay_s, count

    def wait_for_calls(self, count: int, timeout_s: float = 10.0) -> list[Call]:
        """Block until `count` verified calls arrived (for threads; see `wait_for` in async code)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._calls) >= count, timeout_s):
                raise TimeoutError(f"{len(self._calls)} of {count} webhook calls after {timeout_s}s")
            return list(self._calls)

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Call]:
        # Polls instead of blocking on the condition so the caller's loop keeps running.
        deadline = time.monotonic() + timeout_s
        while len(calls := self.calls) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(calls)} of {count} webhook calls after {timeout_s}s")
            await asyncio.sleep(0.01)
        return calls

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        # handler_cancellation: a client that timed out should not leave a slow handler behind.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        # Binding port 0 ourselves avoids the race of picking a "free" port and binding later.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._port = int(sock.getsockname()[1])
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookReceiver:
        return await self.start()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(self.secret, request.headers.get(SIGNATURE_HEADER), body, time.time(), self.tolerance_s):
            with self._cond:
                self._refused += 1
            return web.Response(status=401, text="bad signature")
        with self._cond:
            script = self._script
            failure = script.failures.pop(0) if script.failures else None
            delay = script.delay_s if script.slow_calls is None or script.slow_calls > 0 else 0.0
            if script.slow_calls:
                script.slow_calls -= 1
            status, text, headers = failure or (200, "ok", {"X-Request-Id": f"rcv-{len(self._calls) + 1}"})
            try:
                parsed = msgspec.json.decode(body)
            except msgspec.DecodeError:
                parsed = None
            self._calls.append(Call(CIMultiDict(request.headers), body, parsed, status))
            self._cond.notify_all()
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, text=text, headers=headers)


class ThreadedWebhookReceiver:
    """A WebhookReceiver served from its own thread and event loop."""

    def __init__(self, secret: str, path: str = "/hook", tolerance_s: float = 300) -> None:
        self.receiver = WebhookReceiver(secret, path, tolerance_s)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # The receiver's state is lock-protected, so reading it from the test's thread is safe.
    @property
    def url(self) -> str:
        return self.receiver.url

    @property
    def calls(self) -> list[Call]:
        return self.receiver.calls

    @property
    def delivered(self) -> list[Call]:
        return self.receiver.delivered

    @property
    def refused(self) -> int:
        return self.receiver.refused

    def fail_next(self, count: int, status: int, body: str = "", headers: dict[str, str] | None = None) -> None:
        self.receiver.fail_next(count, status, body, headers)

    def slow(self, delay_s: float, count: int | None = None) -> None:
        self.receiver.slow(delay_s, count)

    def wait_for_calls(self, count: int, timeout_s: float = 10.0) -> list[Call]:
        return self.receiver.wait_for_calls(count, timeout_s)

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Call]:
        return await self.receiver.wait_for(count, timeout_s)

    def start(self, timeout_s: float = 10.0) -> ThreadedWebhookReceiver:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),),
                                        name="webhook-receiver", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"webhook receiver did not start within {timeout_s}s")
        if self._error is not None:
            self._thread.join(timeout_s)
            raise RuntimeError("webhook receiver failed to start") from self._error
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and thread.is_alive():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop already finished on its own
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"webhook receiver did not stop within {timeout_s}s")
        self._thread = None

    def __enter__(self) -> ThreadedWebhookReceiver:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.receiver.start()
        except BaseException as exc:  # handed to start() in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.receiver.stop()
