"""Reading request bodies: bounded in size and in time, and decoded with a 400 for
what is not JSON."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Iterator

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from gateway.errors import ApiError

BODY_READ_TIMEOUT_S = 30.0


async def read_body(request: web.Request, limit: int, too_large_status: int = 413, read_up_to: int = 0) -> bytes:
    """The whole body (decompressed, for `Content-Encoding: gzip`), under a deadline: a
    client that trickles bytes gets 408 rather than holding the server's resources. A
    body over `limit` bytes gets `too_large_status` (Segment answers 400, CleverTap 413).
    A declared length over `max(limit, read_up_to)` is refused before reading; up to
    that the body is read first, so the client gets the answer rather than a reset
    connection while it is still sending."""
    if request.content_length is not None and request.content_length > max(limit, read_up_to):
        raise ApiError(too_large_status, f"request body is larger than {limit} bytes")
    try:
        body = await asyncio.wait_for(request.read(), BODY_READ_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise ApiError(408, f"request body not received within {BODY_READ_TIMEOUT_S:.0f}s") from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(too_large_status, f"request body is larger than {limit} bytes") from None
    except (HttpProcessingError, RequestPayloadError) as exc:  # e.g. a "gzip" body that is not
        raise ApiError(400, f"request body could not be read: {exc}", close_connection=True) from None
    if len(body) > limit:
        raise ApiError(too_large_status, f"request body is larger than {limit} bytes")
    return body


@contextmanager
def json_decode_errors() -> Iterator[None]:
    """A body that is not JSON (malformed, nested too deeply, not UTF-8) becomes a 400."""
    try:
        yield
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
