"""Reading `/api/` request bodies: one JSON object, only the fields a route takes, and
definition errors turned into a 400 whose `path` is where the fault sits in the body."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from gateway.body import json_decode_errors, read_body
from gateway.errors import ApiError
from kairos.segments.definition import SegmentError

MAX_BODY_BYTES = 256 * 1024


def bad_definition(exc: SegmentError, root: str | None = None) -> ApiError:
    """The definition's error, its path rooted where the definition sits in the body."""
    path = exc.path
    if root is not None and (path == "segment" or path.startswith(("segment.", "segment["))):
        path = root + path.removeprefix("segment")
    return ApiError(400, f"{path}: {exc.message}", path=path)


def checked(check: Any, value: Any) -> Any:
    try:
        return check(value)
    except SegmentError as exc:
        raise bad_definition(exc) from None


async def json_object(request: web.Request) -> dict[str, Any]:
    body = await read_body(request, MAX_BODY_BYTES)
    with json_decode_errors():
        decoded = msgspec.json.decode(body)
    if not isinstance(decoded, dict):
        raise ApiError(400, "request body must be a JSON object")
    return decoded


def only_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"{unknown[0]!r} is not a field here (allowed: {', '.join(sorted(allowed))})",
                       path=unknown[0])


def query_int(request: web.Request, name: str, default: int, most: int) -> int:
    """A whole-number query parameter from 1 to `most`; 400 naming it otherwise (the
    length is checked first: int() of a million digits is slow, and past 4300 an error)."""
    text = request.query.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(most))) or not 1 <= int(text) <= most:
        raise ApiError(400, f"'{name}' must be a whole number from 1 to {most}", path=name)
    return int(text)
