"""The OpenAPI document is valid and describes every /api route the gateway serves."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.openapi import openapi_spec
from kairos.channels.in_app import Inbox
from kairos.config import load_settings
from kairos.journeys.clock import SystemClock
from kairos.partitions import PartitionMap
from kairos.routing.tracking import Tracker

pytestmark = pytest.mark.timeout(10)


class NoBackend:
    partition_map = PartitionMap(4, 2)

    async def call_shard(self, shard: int, method: str, *args: Any) -> Any:
        raise AssertionError("not called")

    async def call_journey(self, index: int, method: str, *args: Any) -> Any:
        raise AssertionError("not called")

    async def call_campaign(self, index: int, method: str, *args: Any) -> Any:
        raise AssertionError("not called")


def test_the_document_is_valid_openapi() -> None:
    validate(openapi_spec())


def test_every_api_route_is_documented() -> None:
    app = create_app(load_settings(env={}), NoBackend(), None, None, None, None, None, None,  # type: ignore[arg-type]
                     Inbox(None, SystemClock()), Tracker(bytes(32), "http://127.0.0.1:8080"))  # type: ignore[arg-type]
    served = {
        (re.sub(r"\{(\w+)\}", r"{\1}", route.resource.canonical), route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith("/api/") and route.method != "HEAD"
    }
    paths = openapi_spec()["paths"]
    documented = {(path, method) for path, item in paths.items() for method in item if method != "parameters"}
    assert served and served == documented
