"""Push notifications over FCM HTTP v1, through the official firebase-admin SDK.

Each provider owns its own firebase-admin App (one per account's settings), so two
accounts never share a credential and closing one never disturbs another. Sending goes
through `messaging.send_each_async`: one coroutine per message over a shared httpx
client, rather than the sync `send_each`, which starts a thread per message.

Two places need care because the SDK was written for sync callers:
- The OAuth token is refreshed inside httpx's auth flow with blocking `requests`, which
  would stall the event loop for a round trip to the token endpoint. We refresh it in a
  worker thread before each batch whenever it is not valid, so the SDK never has to.
  (Only a 401 from FCM, i.e. a token revoked mid-life, still makes the SDK refresh
  inline.)
- `firebase_admin.delete_app` closes the async client with `asyncio.run`, which cannot
  run on a running loop; `close()` closes that client itself first, on its own loop.

The SDK would retry 500/503 answers itself (5 attempts, ~7 s of backoff). The router
already retries with its own backoff, then falls back to the next channel; two layers of
retries would multiply attempts and hold a batch for seconds, so the SDK's are turned off.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
import warnings
from typing import Any
from urllib.parse import urlparse

import firebase_admin
import google.auth.exceptions
import msgspec
import requests
from firebase_admin import _http_client, credentials, exceptions, messaging
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from firebase_admin._retry import HttpxRetry
from google.auth.transport import requests as google_requests

from kairos.channels.base import DEFAULT_TIMEOUT_S, Delivery, Outcome, delivered, rejected, transient
from kairos.channels.provider_common import settings_fields, timeout_field
from kairos.segments.definition import SegmentError

# FCM's own limit for one send_each call; the router batches up to this.
MAX_BATCH = 500
_SETTINGS_FIELDS = {"project_id", "service_account", "endpoint", "timeout_s"}
_SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")

# Failures that say this token will never work for this project: the router drops it.
_UNREACHABLE = (messaging.UnregisteredError, messaging.SenderIdMismatchError)
# Failures of this one message that a retry cannot fix: the router falls back at once.
# ThirdPartyAuthError (bad APNs/web-push credentials in the Firebase project) is here
# because retrying within minutes will not fix a project's configuration either.
_REJECTED = (exceptions.InvalidArgumentError, exceptions.NotFoundError,
             exceptions.FailedPreconditionError, exceptions.OutOfRangeError,
             messaging.ThirdPartyAuthError)


class FcmSettings(msgspec.Struct, frozen=True):
    project_id: str
    service_account: dict[str, Any]  # a Google service-account JSON key, parsed
    endpoint: str | None = None  # base URL of an FCM-compatible endpoint; None: Google's
    timeout_s: float = DEFAULT_TIMEOUT_S


def parse_settings(raw: Any, path: str) -> FcmSettings:
    """Validate an account's push settings; a `SegmentError` names the bad field."""
    raw = settings_fields(raw, _SETTINGS_FIELDS, path, "fcm")
    project_id = raw.get("project_id")
    if not isinstance(project_id, str) or not project_id or any(c in project_id for c in "/ \t\n?#"):
        # It becomes a path segment of the send URL, so it must be one plain word.
        raise SegmentError(f"{path}.project_id", "must be the Firebase project id, such as 'my-app-1234'")
    service_account = _parse_service_account(raw.get("service_account"), f"{path}.service_account")
    endpoint = raw.get("endpoint")
    if endpoint is not None and not _is_http_url(endpoint):
        raise SegmentError(f"{path}.endpoint", "must be an http(s) URL such as 'https://fcm.googleapis.com'")
    return FcmSettings(project_id, service_account, endpoint, timeout_field(raw, path, DEFAULT_TIMEOUT_S))


def _parse_service_account(raw: Any, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SegmentError(path, "must be the service-account JSON key (an object) from the Firebase console")
    if raw.get("type") != "service_account":
        raise SegmentError(f"{path}.type", "must be 'service_account'")
    for field in _SERVICE_ACCOUNT_FIELDS:
        if not isinstance(raw.get(field), str) or not raw[field].strip():
            raise SegmentError(f"{path}.{field}", "is required and must be a non-empty string")
    if "@" not in raw["client_email"]:
        raise SegmentError(f"{path}.client_email", "must be the service account's email address")
    if not _is_http_url(raw["token_uri"]):
        raise SegmentError(f"{path}.token_uri", "must be an http(s) URL such as 'https://oauth2.googleapis.com/token'")
    try:
        key = serialization.load_pem_private_key(raw["private_key"].encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        # Never echo the key itself: this message ends up in API answers and logs.
        raise SegmentError(f"{path}.private_key", f"is not a PEM RSA private key ({type(error).__name__})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        # google-auth would take an EC key here and fail on every send after.
        raise SegmentError(f"{path}.private_key", "must be an RSA key, as Google issues them (this one is not RSA)")
    return dict(raw)


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    url = urlparse(value)
    return url.scheme in ("http", "https") and bool(url.hostname) and not url.query and not url.fragment


class FcmProvider:
    channel = "push"

    def __init__(self, settings: FcmSettings) -> None:
        self._timeout_s = settings.timeout_s
        self._app = firebase_admin.initialize_app(
            credentials.Certificate(dict(settings.service_account)),
            {"projectId": settings.project_id, "httpTimeout": settings.timeout_s},
            name=f"kairos-fcm-{uuid.uuid4().hex}")
        self._service = _messaging_service(self._app, settings.project_id, settings.endpoint, settings.timeout_s)
        self._credential = self._app.credential.get_credential()
        self._refresh_lock = asyncio.Lock()
        self._closed = False

    async def send(self, delivery: Delivery) -> Outcome:
        return (await self.send_many([delivery]))[0]

    async def send_many(self, deliveries: list[Delivery]) -> list[Outcome]:
        """One outcome per delivery, in order; one FCM batch call per 500 messages."""
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        messages: list[messaging.Message] = []
        slots: list[int] = []
        for i, delivery in enumerate(deliveries):
            message = _to_message(delivery)
            if isinstance(message, str):
                outcomes[i] = rejected(message)
            else:
                messages.append(message)
                slots.append(i)
        for start in range(0, len(messages), MAX_BATCH):
            chunk = await self._send_chunk(messages[start:start + MAX_BATCH])
            for slot, outcome in zip(slots[start:start + MAX_BATCH], chunk, strict=True):
                outcomes[slot] = outcome
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(deliveries), "every delivery gets exactly one outcome"
        return done

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await _close_async_client(self._service)
        # delete_app runs asyncio.run() (a no-op now): it needs a thread with no loop.
        await asyncio.to_thread(firebase_admin.delete_app, self._app)

    async def _send_chunk(self, messages: list[messaging.Message]) -> list[Outcome]:
        try:
            batch = await asyncio.wait_for(self._send_each(messages), self._timeout_s)
        except TimeoutError:
            # The whole batch shares the deadline. FCM v1 has no idempotency key, so a
            # message that did get through before the deadline may arrive twice on retry.
            return [transient(f"FCM did not answer within {self._timeout_s:g} s")] * len(messages)
        except google.auth.exceptions.GoogleAuthError as error:
            # Our credential, not the address, is at fault: retry, then fall back.
            return [transient(f"FCM credential refresh failed: {type(error).__name__}: {error}")] * len(messages)
        except exceptions.FirebaseError as error:
            # send_each_async wraps anything unexpected in UnknownError for the whole batch.
            return [_failure(error)] * len(messages)
        return [delivered(r.message_id) if r.success else _failure(r.exception) for r in batch.responses]

    async def _send_each(self, messages: list[messaging.Message]) -> messaging.BatchResponse:
        await self._ensure_token()
        return await messaging.send_each_async(messages, app=self._app)

    async def _ensure_token(self) -> None:
        if self._credential.valid:
            return
        async with self._refresh_lock:
            # Another batch may have refreshed it while this one waited for the lock.
            if not self._credential.valid:
                await asyncio.to_thread(self._refresh_token)

    def _refresh_token(self) -> None:
        with requests.Session() as session:
            request = google_requests.Request(session)
            # google-auth would otherwise wait up to 120 s for the token endpoint.
            self._credential.refresh(functools.partial(request, timeout=self._timeout_s))


def _to_message(delivery: Delivery) -> messaging.Message | str:
    """The FCM message for a delivery, or why it cannot be one (a REJECTED detail).

    Checked here rather than left to the SDK because the SDK validates a whole batch up
    front and one bad message would fail all the others."""
    token = delivery.address
    if not token.strip():
        return "push token is empty"
    rendered = delivery.message
    title, body, image, data = (rendered.get(k) for k in ("title", "body", "image", "data"))
    for name, value in (("title", title), ("body", body)):
        if value is not None and not isinstance(value, str):
            return f"message.{name} must be a string"
    if image is not None and not _is_http_url(image):
        return "message.image must be an http(s) URL"
    if data is not None:
        if not isinstance(data, dict):
            return "message.data must be an object of strings"
        bad = next((k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, str)), None)
        if bad is not None:
            return f"message.data.{bad} must be a string"
    if not (title or body or data):
        return "message needs a title, a body or data"
    notification = messaging.Notification(title=title, body=body, image=image) if (title or body or image) else None
    with warnings.catch_warnings():
        # firebase-admin 7.7 deprecates `token` for `fid` (Firebase installation ids), but
        # the devices our SDK users register still hand out registration tokens, and FCM
        # accepts an installation id in `token` too. Only this one warning is ignored,
        # as firebase-admin itself does when it expands a MulticastMessage.
        warnings.filterwarnings("ignore", r"Message\.token is deprecated", DeprecationWarning)
        return messaging.Message(notification=notification, data=data or None, token=token)


def _failure(error: Exception | None) -> Outcome:
    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, _UNREACHABLE):
        return rejected(detail, unreachable=True)
    if isinstance(error, _REJECTED):
        return rejected(detail)
    # Quota, unavailable, internal, deadline, connection and unknown errors, and our
    # own credential being refused (permission denied, unauthenticated): may pass later.
    return transient(detail)


# The only code that reaches into firebase-admin's private parts. It fails loudly if an
# upgrade renames them, rather than quietly sending to Google from a test or a proxy setup.

def _messaging_service(app: firebase_admin.App, project_id: str, endpoint: str | None, timeout_s: float) -> Any:
    """The app's messaging service, sending to `endpoint` when one is given."""
    service = messaging._get_messaging_service(app)
    if endpoint is not None:
        # firebase-admin has no option for the FCM host: it formats the production URL
        # once, in _MessagingService.__init__, into `_fcm_url`. Replacing it is the only
        # way to reach a proxy or the tests' loopback FCM server.
        if not isinstance(getattr(service, "_fcm_url", None), str):
            raise RuntimeError(f"firebase-admin {firebase_admin.__version__} has no _fcm_url: update kairos.channels.fcm")
        service._fcm_url = f"{endpoint.rstrip('/')}/v1/projects/{project_id}/messages:send"
    # The router owns retries (see the module's docstring): the same client, without them.
    # Nothing has used the SDK's own client yet, so it holds no connection to close.
    if not hasattr(service, "_async_client") or not hasattr(service, "_credential"):
        raise RuntimeError(f"firebase-admin {firebase_admin.__version__} has no _async_client: update kairos.channels.fcm")
    service._async_client = _http_client.HttpxAsyncClient(
        credential=service._credential, timeout=timeout_s, retry_config=HttpxRetry(max_retries=0))
    return service


async def _close_async_client(service: Any) -> None:
    # delete_app() would close this client with asyncio.run(), impossible on a running
    # loop; closed here, on the loop that used it, that later close is a no-op.
    client = getattr(service, "_async_client", None)
    if client is None:
        raise RuntimeError(f"firebase-admin {firebase_admin.__version__} has no _async_client: update kairos.channels.fcm")
    await client.aclose()
