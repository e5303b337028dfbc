"""Overload: the gateway answers 429 instead of queueing without bound."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp import web

from gateway.app import ADMISSION, create_app
from kairos.accounts import Accounts
from kairos.campaigns.catalog import CampaignCatalog
from kairos.channels.in_app import Inbox
from kairos.journeys.clock import SystemClock
from kairos.config import load_settings
from kairos.partitions import PartitionMap
from kairos.redis_server import _free_port
from kairos.journeys.catalog import JourneyCatalog
from kairos.routing.tracking import Tracker
from kairos.segments.catalog import SegmentCatalog
from kairos.segments.signals import SignalLog
from tests.integration.conftest import event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class StalledBackend:
    """Shards that have fallen behind: every ingest waits until released."""

    def __init__(self) -> None:
        self.partition_map = PartitionMap(4, 2)
        self.release = asyncio.Event()
        self.waiting = 0

    async def ingest(self, account: str, payload: bytes) -> None:
        self.waiting += 1
        await self.release.wait()

    async def call_shard(self, shard: int, method: str, *args: Any) -> Any:
        raise AssertionError("not used")

    async def call_journey(self, index: int, method: str, *args: Any) -> Any:
        raise AssertionError("not used")

    async def call_campaign(self, index: int, method: str, *args: Any) -> Any:
        raise AssertionError("not used")

    async def user_of(self, account: str, identifier: str) -> str | None:
        return "1"  # the identity graph answers; only ingest has fallen behind


@pytest_asyncio.fixture
async def stalled_gateway(redis_server: Any) -> AsyncIterator[tuple[str, StalledBackend, web.Application, Accounts]]:
    settings = load_settings(env={}, redis_url=redis_server.url, port=_free_port(),
                             max_inflight_uploads=20, max_inflight_uploads_per_account=15, max_inbox_streams=2)
    client = aioredis.Redis.from_url(redis_server.url)
    accounts = Accounts(client)
    backend = StalledBackend()
    app = create_app(settings, backend, accounts, SegmentCatalog(client), SignalLog(client), JourneyCatalog(client),
                     CampaignCatalog(client, SystemClock()), client, Inbox(client, SystemClock()),
                     Tracker(bytes(32), "http://127.0.0.1"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    yield f"http://127.0.0.1:{settings.port}", backend, app, accounts
    backend.release.set()
    await runner.cleanup()
    await client.aclose()


async def test_overload_gets_429_and_in_flight_stays_bounded(stalled_gateway: Any) -> None:
    base, backend, app, accounts = stalled_gateway
    one, two = await accounts.create("bp-one"), await accounts.create("bp-two")
    body = {"d": [event("u", "Load")]}

    async def upload(creds: Any, session: aiohttp.ClientSession) -> tuple[int, Any]:
        headers = {"X-CleverTap-Account-Id": creds.account_id, "X-CleverTap-Passcode": creds.passcode}
        async with session.post(base + "/1/upload", json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async with aiohttp.ClientSession() as session:
        # Warm the passcode cache so admission, not the slow hash, decides timing.
        assert await accounts.authenticate(one.account_id, one.passcode)
        first = [asyncio.create_task(upload(one, session)) for _ in range(25)]
        while backend.waiting < 15:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        # Account one is at CleverTap's 15 concurrent uploads: the other 10 were refused.
        refused = [t.result() for t in first if t.done()]
        assert len(refused) == 10
        assert all(status == 429 for status, _ in refused)
        assert all(b == {"status": "fail", "error": "Too many concurrent requests", "code": 429} for _, b in refused)

        # The process-wide bound (20) caps everyone: account two gets 5 in, then 429s.
        second = [asyncio.create_task(upload(two, session)) for _ in range(10)]
        while backend.waiting < 20:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert sum(1 for t in second if t.done() and t.result()[0] == 429) == 5
        assert app[ADMISSION].in_flight == 20

        backend.release.set()
        finished = await asyncio.gather(*first, *second)
    assert sorted(status for status, _ in finished).count(200) == 20
    assert app[ADMISSION].in_flight == 0


async def test_inbox_streams_beyond_the_limit_get_503_and_a_closed_one_frees_its_place(stalled_gateway: Any) -> None:
    base, _, _, accounts = stalled_gateway
    creds = await accounts.create("bp-streams")
    headers = {"X-CleverTap-Account-Id": creds.account_id, "X-CleverTap-Passcode": creds.passcode}
    url = base + "/1/inbox/stream?identity=ann"
    async with aiohttp.ClientSession() as session:
        first, second = await session.get(url, headers=headers), await session.get(url, headers=headers)
        assert (first.status, second.status) == (200, 200)
        async with session.get(url, headers=headers) as third:
            assert third.status == 503 and "inbox streams" in (await third.json())["error"]
        first.close()
        # The gateway notices the closed stream within its one-second poll, long before a heartbeat.
        statuses = []
        for _ in range(30):
            await asyncio.sleep(0.1)
            async with session.get(url, headers=headers) as again:
                statuses.append(again.status)
                if again.status == 200:
                    break
        assert statuses[-1] == 200 and len(statuses) <= 20, statuses
        second.close()
