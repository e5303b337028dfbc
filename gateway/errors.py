"""CleverTap's request-level error shape: `{"status":"fail","error":...,"code":...}`."""

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


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(payload), content_type="application/json")


class ApiError(Exception):
    """Raised by handlers for a request-level failure; the middleware renders it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
