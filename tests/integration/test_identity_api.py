"""Identity resolution through the CleverTap API: real gateway, real Ray actors, real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kairos.partitions import PartitionMap

from conftest import Api, Kairos, event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def login(identity: str, object_id: str, ts: int = 1_790_000_100, **props: Any) -> dict[str, Any]:
    """What CleverTap's onUserLogin sends: a profile naming the customer id and the device."""
    return {"type": "profile", "identity": identity, "objectId": object_id, "ts": ts, "profileData": props}


def device_event(object_id: str, name: str, ts: int = 1_790_000_000) -> dict[str, Any]:
    return {"type": "event", "objectId": object_id, "evtName": name, "ts": ts, "evtData": {}}


async def customer_and_device_on_two_shards(api: Api, kairos: Kairos) -> tuple[str, str]:
    """In a fresh account the n-th new identifier becomes user n. Create the customer
    (user 1), fillers, then a device whose user lands on the other shard."""
    pmap = PartitionMap(kairos.settings.partitions, kairos.settings.shards)
    shard_of = lambda user: pmap.shard_of(pmap.partition_of(api.creds.account_id, user))  # noqa: E731
    device_user = next(n for n in range(2, 100) if shard_of(str(n)) != shard_of("1"))
    status, _ = await api.upload([event("cust-1", "Purchased")])
    assert status == 200
    if device_user > 2:
        await api.upload([event(f"filler-{n}", "Filler") for n in range(2, device_user)])
    await api.upload([device_event("dev-1", "Screen Opened") for _ in range(4)])
    return "cust-1", "dev-1"


async def test_on_user_login_merges_the_device_into_the_customer_across_shards(make_api: Any, kairos: Kairos) -> None:
    api = await make_api()
    customer, device = await customer_and_device_on_two_shards(api, kairos)

    status, body = await api.upload([login(customer, device, Name="Ada", Email="ada@example.com")])
    assert (status, body["status"]) == (200, "success")

    status, by_identity = await api.profile(identity=customer)
    assert status == 200
    _, by_device = await api.profile(objectId=device)
    _, by_email = await api.profile(email="ada@example.com")
    assert by_identity == by_device == by_email
    record = by_identity["record"]
    assert record["events"]["Purchased"]["count"] == 1
    assert record["events"]["Screen Opened"]["count"] == 4
    assert record["profileData"] == {"Name": "Ada", "Email": "ada@example.com"}
    assert record["identities"]["identity"] == [customer]
    assert record["identities"]["objectId"] == [device]
    assert await api.count_events("Screen Opened") == 4
    downloaded = await api.download("events", "Screen Opened", batch_size=10)
    assert len(downloaded) == 4


async def test_writers_racing_a_merge_lose_and_double_nothing(make_api: Any, kairos: Kairos) -> None:
    api = await make_api()
    customer, device = await customer_and_device_on_two_shards(api, kairos)

    async def writer(k: int) -> None:
        for i in range(8):
            records = [
                event(customer, "Race") if (i + j + k) % 2 else device_event(device, "Race") for j in range(25)
            ]
            status, body = await api.upload(records)
            assert (status, body["processed"]) == (200, 25)

    async def merge() -> None:
        await asyncio.sleep(0.05)
        status, _ = await api.upload([login(customer, device)])
        assert status == 200

    await asyncio.gather(*(writer(k) for k in range(6)), merge())

    assert await api.count_events("Race") == 6 * 8 * 25
    _, by_device = await api.profile(objectId=device)
    _, by_identity = await api.profile(identity=customer)
    assert by_device == by_identity
    assert by_device["record"]["events"]["Race"]["count"] == 6 * 8 * 25
    assert by_device["record"]["events"]["Screen Opened"]["count"] == 4


async def test_a_profile_with_an_email_already_known_merges_into_its_owner(make_api: Any) -> None:
    api = await make_api()
    await api.upload([{"type": "profile", "identity": "web-7",
                       "profileData": {"Email": "x@y.co", "Phone": "+447700900123", "Plan": "pro"}}])
    await api.upload([event("app-7", "Opened"), event("app-7", "Opened")])
    await api.upload([{"type": "profile", "identity": "app-7", "profileData": {"Email": "x@y.co"}}])
    _, web = await api.profile(identity="web-7")
    _, app = await api.profile(identity="app-7")
    _, by_phone = await api.profile(phone="%2B447700900123")
    assert web == app == by_phone
    assert web["record"]["events"]["Opened"]["count"] == 2
    assert sorted(web["record"]["identities"]["identity"]) == ["app-7", "web-7"]
    assert web["record"]["profileData"]["Plan"] == "pro"


async def test_demerge_splits_a_login_merge_back_into_two_profiles(make_api: Any, kairos: Kairos) -> None:
    api = await make_api()
    customer, device = await customer_and_device_on_two_shards(api, kairos)
    await api.upload([login(customer, device, Email="ada@example.com")])
    await api.upload([event(customer, "After Login")])

    status, body = await api.request("POST", "/1/demerge/profiles.json", {"identities": ["ada@example.com", "nobody"]})
    assert status == 200
    assert (body["status"], body["processed"]) == ("partial", 1)
    assert body["unprocessed"] == [{"identity": "nobody", "error": "no profile has this identity or email"}]

    _, by_device = await api.profile(objectId=device)
    _, by_identity = await api.profile(identity=customer)
    assert by_device != by_identity
    assert {k: v["count"] for k, v in by_device["record"]["events"].items()} == {"Screen Opened": 4}
    assert {k: v["count"] for k, v in by_identity["record"]["events"].items()} == {"Purchased": 1, "After Login": 1}
    assert await api.count_events("Screen Opened") == 4
    # A profile that is no merge (any more) is reported, not split.
    status, body = await api.request("POST", "/1/demerge/profiles.json", {"identities": [customer]})
    assert (status, body["status"]) == (200, "fail")
    for bad in ({}, {"identities": []}, {"identities": [1]}, {"identities": ["x"] * 101}):
        status, body = await api.request("POST", "/1/demerge/profiles.json", bad)
        assert status == 400 and body["status"] == "fail", bad
