"""Serves the Kairos API's OpenAPI document (gateway/openapi.yaml) as JSON."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

DOCUMENT = Path(__file__).with_name("openapi.yaml")


@lru_cache(maxsize=1)
def openapi_spec() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text())


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec())
