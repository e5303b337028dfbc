"""Request-level error shapes: CleverTap's `{"status":"fail","error":...,"code":...}` on
its API, Segment's `{"code":...,"message":...}` on `/v1/`, and on `/api/` CleverTap's
shape plus `path`, the part of the request body at fault."""

from __future__ import annotations

import msgspec
from aiohttp import web


class ErrorBody(msgspec.Struct):
    status: str
    error: str
    code: int


def ct_error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(ErrorBody("fail", message, status)),
        content_type="application/json",
    )


class SegmentErrorBody(msgspec.Struct):
    success: bool
    code: str
    message: str


_SEGMENT_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                  408: "request_timeout", 413: "payload_too_large", 429: "too_many_requests",
                  500: "internal_error", 503: "unavailable"}


def segment_error(status: int, message: str) -> web.Response:
    code = _SEGMENT_CODES.get(status, "error")
    return web.Response(
        status=status, body=msgspec.json.encode(SegmentErrorBody(False, code, message)), content_type="application/json"
    )


class KairosErrorBody(msgspec.Struct, omit_defaults=True):
    status: str
    error: str
    code: int
    path: str | None = None


def error_for(path: str, status: int, message: str, at: str | None = None) -> web.Response:
    """The error in the shape of the API the request was made to; `at` locates the
    offending part of the body, where known."""
    if path.startswith("/v1/"):
        return segment_error(status, message)
    if path.startswith("/api/"):
        return json_response(KairosErrorBody("fail", message, status, at), status)
    return ct_error(status, message)


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(payload), content_type="application/json")


class ApiError(Exception):
    """Raised by handlers for a request-level failure; the middleware renders it."""

    def __init__(self, status: int, message: str, close_connection: bool = False, path: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.path = path
        # The request's bytes could not be parsed to their end, so the connection cannot
        # carry another request: tell the client not to reuse it.
        self.close_connection = close_connection
