"""Real Ray (started once per session, 2 CPUs), a real redis-server, the real gateway on
loopback. Each test makes its own account, so tests never see each other's data."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import msgspec
import pytest
import pytest_asyncio
import ray
import redis.asyncio as aioredis

from actors.deploy import NAMESPACE, Deployment, deploy, ray_system_config
from kairos.accounts import Accounts, Credentials
from kairos.config import Settings, load_settings
from kairos.redis_server import EmbeddedRedis, _free_port
from tests.loopback.sns import URL_PATTERN as SNS_URL_PATTERN


class Kairos(msgspec.Struct):
    settings: Settings
    deployment: Deployment
    base_url: str


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, namespace=NAMESPACE, logging_level="WARNING",
             _system_config=ray_system_config())
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def kairos(redis_server: EmbeddedRedis, ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kairos]:
    # Small snapshot threshold so the session exercises snapshot + trim + replay.
    settings = load_settings(
        env={}, data_dir=str(tmp_path_factory.mktemp("data")), redis_url=redis_server.url,
        port=_free_port(), snapshot_every_records=3000, max_body_bytes=2 * 1024 * 1024,
        # Journeys wait on a clock the tests move (kairos.journeys.clock.ManualClock).
        clock="manual",
        # SES events come from tests.loopback.sns, which signs as SNS does.
        sns_url_pattern=SNS_URL_PATTERN,
    )
    deployment = deploy(settings)
    yield Kairos(settings, deployment, f"http://127.0.0.1:{settings.port}")
    deployment.shutdown()


@pytest_asyncio.fixture
async def make_account(redis_server: EmbeddedRedis) -> AsyncIterator[Callable[[str], Awaitable[Credentials]]]:
    client = aioredis.Redis.from_url(redis_server.url)
    counter = 0

    async def create(prefix: str = "test") -> Credentials:
        nonlocal counter
        counter += 1
        return await Accounts(client).create(f"{prefix}-{counter}-{id(client)}-{asyncio.get_running_loop().time()}")

    yield create
    await client.aclose()


class Api:
    """A CleverTap API client for one account."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, creds: Credentials) -> None:
        self.session = session
        self.base = base_url
        self.creds = creds
        self.headers = {"X-CleverTap-Account-Id": creds.account_id, "X-CleverTap-Passcode": creds.passcode,
                        "Content-Type": "application/json; charset=utf-8"}

    async def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data: Any = raw if raw is not None else (msgspec.json.encode(body) if body is not None else None)
        if data is not None and len(data) > 1_000_000:
            data = io.BytesIO(data)  # aiohttp warns (an error here) on large raw bodies
        async with self.session.request(method, self.base + path, data=data,
                                        headers=self.headers if headers is None else headers) as resp:
            payload = await resp.read()
            return resp.status, msgspec.json.decode(payload) if payload else None

    async def upload(self, records: list[dict[str, Any]], query: str = "") -> tuple[int, Any]:
        return await self.request("POST", "/1/upload" + query, {"d": records})

    async def profile(self, **query: str) -> tuple[int, Any]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return await self.request("GET", f"/1/profile.json?{qs}")

    async def count_events(self, name: str, frm: int = 20200101, to: int = 20301231) -> int:
        status, body = await self.request("POST", "/1/counts/events.json", {"event_name": name, "from": frm, "to": to})
        assert status == 200, body
        return int(body["count"])

    async def download(self, kind: str, name: str, batch_size: int, frm: int = 20200101, to: int = 20301231) -> list[Any]:
        status, body = await self.request("POST", f"/1/{kind}.json?batch_size={batch_size}",
                                          {"event_name": name, "from": frm, "to": to})
        assert status == 200, body
        records, cursor = [], body["cursor"]
        while cursor:
            status, page = await self.request("GET", f"/1/{kind}.json?cursor={cursor}")
            assert status == 200, page
            assert len(page["records"]) <= batch_size
            records.extend(page["records"])
            cursor = page.get("next_cursor")
        return records


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest_asyncio.fixture
async def make_api(kairos: Kairos, http: aiohttp.ClientSession,
                   make_account: Callable[[str], Awaitable[Credentials]]) -> Callable[[], Awaitable[Api]]:
    async def create() -> Api:
        return Api(http, kairos.base_url, await make_account("api"))

    return create


def event(user: str, name: str = "Product Viewed", ts: int = 1_790_000_000, **props: Any) -> dict[str, Any]:
    return {"identity": user, "type": "event", "evtName": name, "ts": ts, "evtData": props}
