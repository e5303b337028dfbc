"""A local server that speaks FCM HTTP v1 and Google's OAuth2 token exchange, so the
real firebase-admin SDK (and the real google-auth credential inside it) can be driven
over loopback with nothing mocked. No FCM emulator exists.

- `POST /token`: the JWT-bearer grant a service-account credential makes. The assertion's
  RS256 signature is checked against the keys of service accounts made by
  `FcmServer.service_account()`; each exchange issues a fresh access token.
- `POST /v1/projects/{project}/messages:send`: needs `Authorization: Bearer <issued token>`;
  records each accepted message and answers `{"name": "projects/<p>/messages/<id>"}`.
  Tokens can be marked unregistered or invalid, and the whole service can be put in an
  outage (503, 500 or 429) or made slow, with the error bodies FCM really sends.

Use `async with FcmServer() as fcm:` inside a test, or `FcmServerThread` when the server
must keep answering while the test's own loop is busy (e.g. blocked in Ray calls).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import threading
import time
from typing import Any

import msgspec
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PROJECT = "test-proj"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
_SEND_SCOPES = {f"https://www.googleapis.com/auth/{s}" for s in ("cloud-platform", "firebase", "firebase.messaging")}
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
# Keys FCM refuses in `data` (its docs: reserved words and prefixes).
_RESERVED_DATA = {"from", "notification", "message_type"}
_RESERVED_PREFIXES = ("google.", "gcm.")
_OUTAGES = {
    503: ("UNAVAILABLE", "The service is currently unavailable.", None),
    500: ("INTERNAL", "Internal error encountered.", "INTERNAL"),
    429: ("RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests'.", "QUOTA_EXCEEDED"),
}


class Received(msgspec.Struct, frozen=True):
    project: str
    message: dict[str, Any]  # the v1 `message` object as sent: token, notification, data...
    bearer: str  # the access token the request carried
    name: str  # the message name the server answered with


def make_service_account(token_uri: str, project_id: str = PROJECT) -> dict[str, Any]:
    """A genuine service-account key (fresh RSA key) whose OAuth exchange goes to `token_uri`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    name = f"kairos-test-{secrets.token_hex(4)}"
    email = f"{name}@{project_id}.iam.gserviceaccount.com"
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }


def _error(status: int, code: str, message: str, fcm_code: str | None = None) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": code}
    if fcm_code:
        error["details"] = [{"@type": _FCM_ERROR, "errorCode": fcm_code}]
    return web.json_response({"error": error}, status=status)


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class FcmServer:
    def __init__(self) -> None:
        # Tests change these from another thread with FcmServerThread: one lock for all.
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._keys: dict[str, rsa.RSAPublicKey] = {}  # client_email -> public key
        self._issued: set[str] = set()
        self._unregistered: set[str] = set()
        self._invalid: set[str] = set()
        self._outage: int | None = None
        self._delay_s = 0.0
        self._ids = itertools.count(1)
        self.send_requests = 0  # every messages:send request, including refused ones and retries
        self.token_requests = 0
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self.url = ""

    # -- test controls -------------------------------------------------------------

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def issued_tokens(self) -> set[str]:
        with self._lock:
            return set(self._issued)

    def service_account(self, project_id: str = PROJECT) -> dict[str, Any]:
        """A service account this server trusts (its token exchange succeeds)."""
        account = make_service_account(self.token_uri, project_id)
        self.trust(account)
        return account

    def trust(self, account: dict[str, Any]) -> None:
        key = serialization.load_pem_private_key(account["private_key"].encode(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        with self._lock:
            self._keys[account["client_email"]] = key.public_key()

    def unregister(self, *tokens: str) -> None:
        with self._lock:
            self._unregistered.update(tokens)

    def invalidate(self, *tokens: str) -> None:
        """These tokens get 400 INVALID_ARGUMENT, as a malformed registration token does."""
        with self._lock:
            self._invalid.update(tokens)

    def set_outage(self, status: int | None = 503) -> None:
        """Answer every send with 503 UNAVAILABLE, 500 INTERNAL or 429 QUOTA_EXCEEDED; None ends it."""
        if status is not None and status not in _OUTAGES:
            raise ValueError(f"outage status must be one of {sorted(_OUTAGES)}")
        with self._lock:
            self._outage = status

    def set_delay(self, seconds: float) -> None:
        with self._lock:
            self._delay_s = seconds

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> FcmServer:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self._stopping = asyncio.Event()
        # A slow handler wakes when stopping, so a short shutdown timeout is enough.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FcmServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- handlers --------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        with self._lock:
            self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        problem = self._check_assertion(str(form.get("assertion", "")))
        if problem:
            return web.json_response({"error": "invalid_grant", "error_description": problem}, status=400)
        token = f"ya29.loopback-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._issued.add(token)
        return web.json_response({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _check_assertion(self, assertion: str) -> str | None:
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header, claims = json.loads(_b64url(header_b64)), json.loads(_b64url(claims_b64))
            signature = _b64url(signature_b64)
        except ValueError:
            return "assertion is not a JWT"
        if header.get("alg") != "RS256":
            return "assertion must be signed with RS256"
        with self._lock:
            key = self._keys.get(claims.get("iss", ""))
        if key is None:
            return f"unknown service account {claims.get('iss')!r}"
        try:
            key.verify(signature, f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "bad assertion signature"
        # google-auth addresses the assertion to Google's token endpoint whatever the
        # token_uri, and Google checks for exactly that.
        if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, self.token_uri):
            return f"assertion audience {claims.get('aud')!r} is not {GOOGLE_TOKEN_AUDIENCE!r}"
        if not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
            return "assertion expired"
        if not _SEND_SCOPES & set(str(claims.get("scope", "")).split()):
            return "assertion lacks a scope that may send FCM messages"
        return None

    async def _send(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        auth = request.headers.get("Authorization", "")
        bearer = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        with self._lock:
            self.send_requests += 1
            authorized = bearer in self._issued
            outage, delay_s = self._outage, self._delay_s
        if not authorized:
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if delay_s:
            assert self._stopping is not None
            try:
                await asyncio.wait_for(self._stopping.wait(), delay_s)
            except TimeoutError:
                pass
        if outage is not None:
            return _error(outage, *_OUTAGES[outage])
        try:
            body = await request.json()
            message = body["message"]
            # A device is named by a registration token or, since 2026, an installation id.
            [token] = [message[target] for target in ("token", "fid") if target in message]
        except (ValueError, KeyError, TypeError):
            return _error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT")
        data = message.get("data") or {}
        reserved = [k for k in data if k in _RESERVED_DATA or k.startswith(_RESERVED_PREFIXES)]
        with self._lock:
            unregistered, invalid = token in self._unregistered, token in self._invalid
        if not isinstance(token, str) or not token or invalid:
            return _error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token",
                          "INVALID_ARGUMENT")
        if reserved:
            return _error(400, "INVALID_ARGUMENT", f"Invalid data payload key: {reserved[0]}", "INVALID_ARGUMENT")
        if unregistered:
            return _error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        name = f"projects/{project}/messages/{next(self._ids)}"
        with self._lock:
            self._received.append(Received(project, message, bearer, name))
        return web.json_response({"name": name})


class FcmServerThread(FcmServer):
    """The same server on its own event loop in a daemon thread: it keeps answering
    while the test's loop blocks. Controls and `received` are safe from any thread."""

    def __init__(self) -> None:
        super().__init__()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FcmServerThread:  # type: ignore[override]
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(FcmServer.start(self))
            except BaseException as error:  # handed to the starting thread below
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(FcmServer.close(self))
            loop.close()

        self._thread = threading.Thread(target=run, name="fcm-loopback", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the loopback FCM server did not start within 10 s")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the loopback FCM server did not stop within 10 s")
        self._thread = None

    def __enter__(self) -> FcmServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
