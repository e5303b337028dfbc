"""What the SES and SNS providers share: their AWS settings, one boto3 client run on the
provider's own worker threads with a timeout, and how an AWS failure becomes an Outcome.

boto3 is blocking, so every call runs on a small ThreadPoolExecutor the provider owns (its
size matches the client's connection pool, so a thread never waits for a connection). The
client is made lazily on a worker thread: making one reads service models from disk and
may walk the credential chain (instance metadata), neither of which may block the loop.
botocore does not retry (`max_attempts: 1`): the router retries with its own backoff, and
a retry inside the SDK would only make the router's timeout lie.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import boto3
import msgspec
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError, ClientError, NoCredentialsError, NoRegionError, ParamValidationError, PartialCredentialsError,
)

from kairos.channels.base import DEFAULT_TIMEOUT_S, Outcome, delivered, rejected, transient
from kairos.channels.provider_common import redacted_repr, secret_pair, text_field, timeout_field

WORKERS = 8
AWS_FIELDS = {"region", "access_key_id", "secret_access_key", "endpoint_url", "timeout_s"}
# Codes that say "not now" rather than "not ever", whatever their HTTP status.
TRANSIENT_CODES = frozenset({
    "TooManyRequestsException", "LimitExceededException", "Throttling", "ThrottlingException", "Throttled",
    "ThrottledException", "RequestLimitExceeded", "KMSThrottling", "RequestTimeout", "RequestTimeoutException",
    "ServiceUnavailable", "InternalError", "InternalFailure", "PriorRequestNotComplete",
})
# Failures of our own configuration or of the message: no retry fixes them, so the router
# should fall back at once. Any other botocore failure is about the network or the service.
_LOCAL_REJECTIONS = (NoCredentialsError, PartialCredentialsError, NoRegionError, ParamValidationError)


class AwsSettings(msgspec.Struct, frozen=True, kw_only=True):
    region: str
    access_key_id: str | None = None  # None (with the secret): the default AWS credential chain
    secret_access_key: str | None = None
    endpoint_url: str | None = None  # a local stand-in (moto) or a VPC endpoint
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __repr__(self) -> str:
        return redacted_repr(self, frozenset({"secret_access_key"}))


def aws_fields(raw: dict[str, Any], path: str) -> dict[str, Any]:
    """The AwsSettings fields of a settings object, checked, as keyword arguments."""
    region = text_field(raw, "region", path, required=True, pattern=r"[a-z]{2}(-[a-z]+)+-\d{1,2}",
                        hint="an AWS region such as 'us-east-1'", max_len=40)
    key_id, secret = secret_pair(raw, "access_key_id", "secret_access_key", path)
    endpoint = text_field(raw, "endpoint_url", path, pattern=r"https?://[^\s/]+(/\S*)?",
                          hint="an http:// or https:// URL")
    return {"region": region, "access_key_id": key_id, "secret_access_key": secret, "endpoint_url": endpoint,
            "timeout_s": timeout_field(raw, path, DEFAULT_TIMEOUT_S)}


class AwsClient:
    """One boto3 client for `service`, called without blocking the event loop."""

    def __init__(self, service: str, settings: AwsSettings) -> None:
        self._service = service
        self._settings = settings
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix=f"kairos-{service}")
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._closed = False

    async def call(self, operation: str, unreachable: Callable[[str, str], bool], **params: Any) -> Outcome:
        """Run one API call; DELIVERED carries the response's MessageId. `unreachable(code,
        message)` tells which rejections mean the address itself is dead."""
        if self._closed:
            # The registry closes a provider when its settings change, possibly with sends
            # still on their way here: the router's retry will find the new one.
            return transient(f"{self._service}: provider closed")
        loop = asyncio.get_running_loop()
        try:
            response = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._call_sync, operation, params), self._settings.timeout_s)
        except TimeoutError:
            # The worker thread carries on until botocore's own read timeout ends it.
            return transient(f"{self._service}: no answer within {self._settings.timeout_s:g}s")
        except ClientError as exc:
            return classify_client_error(self._service, exc, unreachable)
        except _LOCAL_REJECTIONS as exc:
            return rejected(f"{self._service}: {exc}")
        except BotoCoreError as exc:
            # Connection refused or reset, DNS, connect/read timeouts, credential fetch hiccups.
            return transient(f"{self._service}: {exc}")
        return delivered(response.get("MessageId"))

    def _call_sync(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
        result: dict[str, Any] = getattr(self._client, operation)(**params)
        return result

    def _make_client(self) -> Any:
        s = self._settings
        # A session of our own: boto3's default session is not safe to share across threads.
        session = boto3.session.Session(aws_access_key_id=s.access_key_id, aws_secret_access_key=s.secret_access_key,
                                        region_name=s.region)
        config = Config(connect_timeout=s.timeout_s, read_timeout=s.timeout_s, retries={"max_attempts": 1},
                        max_pool_connections=WORKERS)
        return session.client(self._service, endpoint_url=s.endpoint_url, config=config)  # type: ignore[call-overload]

    async def close(self) -> None:
        self._closed = True
        # Waits for calls in flight (each bounded by botocore's timeouts), off the loop.
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def classify_client_error(service: str, exc: ClientError, unreachable: Callable[[str, str], bool]) -> Outcome:
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    detail = f"{service} {code or status}: {message}"
    if code in TRANSIENT_CODES or status == 429 or status >= 500 or status == 0:
        return transient(detail)
    # Any other 4xx is the request's fault (sender, account, content or address): retrying
    # the same request cannot succeed.
    return rejected(detail, unreachable=unreachable(code, message))
