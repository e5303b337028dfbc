"""The identity graph's Lua script against a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from kairos.identity_graph import IdentityGraph
from kairos.redis_server import EmbeddedRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

_accounts = itertools.count()


@pytest_asyncio.fixture
async def graph(redis_server: EmbeddedRedis) -> AsyncIterator[IdentityGraph]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield IdentityGraph(client, clock=lambda: 1000.0)
    await client.aclose()


@pytest.fixture
def account() -> str:
    return f"ACC-GRAPH-{next(_accounts)}-{id(object())}"


async def test_new_identifiers_get_new_users_and_known_ones_keep_theirs(graph: IdentityGraph, account: str) -> None:
    users, merges = await graph.resolve(account, [["identity:1"], ["objectId:d1"], ["identity:1"]])
    assert users == ["1", "2", "1"] and merges == []
    users, _ = await graph.resolve(account, [["identity:1", "Email:a@x.co"]])  # attaches a new identifier
    assert users == ["1"]
    assert await graph.lookup(account, ["Email:a@x.co", "identity:1", "identity:nobody"]) == ["1", "1", None]
    assert await graph.identifiers(account, "1") == ["Email:a@x.co", "identity:1"]


async def test_a_record_tying_two_users_merges_the_younger_into_the_older(graph: IdentityGraph, account: str) -> None:
    await graph.resolve(account, [["identity:1"], ["objectId:d1"], ["objectId:d2"]])
    await graph.resolve(account, [["objectId:d2", "anonymousId:x"]])
    users, merges = await graph.resolve(account, [["objectId:d2", "identity:1"]])
    assert users == ["1"]
    assert [(m.user, m.into) for m in merges] == [("3", "1")]
    # Every identifier of the merged user now names the survivor.
    assert await graph.lookup(account, ["objectId:d2", "anonymousId:x"]) == ["1", "1"]
    assert await graph.identifiers(account, "1") == ["anonymousId:x", "identity:1", "objectId:d2"]
    assert await graph.identifiers(account, "3") == []
    pending = [m for m in await graph.pending_merges() if m.account == account]
    assert [(m.user, m.into, m.since) for m in pending] == [("3", "1", 1000.0)]
    await graph.finish_merges(pending)
    assert [m for m in await graph.pending_merges() if m.account == account] == []


async def test_current_follows_a_chain_of_merges(graph: IdentityGraph, account: str) -> None:
    await graph.resolve(account, [["a:1"], ["a:2"], ["a:3"]])
    await graph.resolve(account, [["a:3", "a:2"]])  # 3 -> 2
    await graph.resolve(account, [["a:2", "a:1"]])  # 2 (holding 3's identifiers) -> 1
    assert await graph.current(account, "3") == "1"
    assert await graph.current(account, "2") == "1"
    assert await graph.current(account, "1") == "1"
    assert await graph.lookup(account, ["a:3"]) == ["1"]


async def test_one_call_ties_three_users_at_once(graph: IdentityGraph, account: str) -> None:
    await graph.resolve(account, [["a:1"], ["a:2"], ["a:3"]])
    users, merges = await graph.resolve(account, [["a:3", "a:2", "a:1", "a:new"]])
    assert users == ["1"]
    assert sorted((m.user, m.into) for m in merges) == [("2", "1"), ("3", "1")]
    assert await graph.identifiers(account, "1") == ["a:1", "a:2", "a:3", "a:new"]


async def test_concurrent_resolvers_agree_on_one_user_per_identifier(graph: IdentityGraph, account: str) -> None:
    async def resolve(k: int) -> list[str]:
        users, _ = await graph.resolve(account, [[f"identity:{i}"] for i in range(k % 3, 60, 1)])
        return users

    answers = await asyncio.gather(*(resolve(k) for k in range(12)))
    by_identifier: dict[int, set[str]] = {}
    for k, users in enumerate(answers):
        for i, user in zip(range(k % 3, 60), users):
            by_identifier.setdefault(i, set()).add(user)
    assert all(len(users) == 1 for users in by_identifier.values())
    assert len({next(iter(u)) for u in by_identifier.values()}) == 60


async def test_accounts_have_separate_graphs(graph: IdentityGraph, account: str) -> None:
    other = account + "-other"
    await graph.resolve(account, [["identity:1"]])
    await graph.resolve(other, [["objectId:z"], ["identity:1"]])
    assert await graph.lookup(account, ["identity:1", "objectId:z"]) == ["1", None]
    assert await graph.lookup(other, ["identity:1"]) == ["2"]


async def test_split_gives_each_part_a_fresh_user_and_forwards_the_rest(graph: IdentityGraph, account: str) -> None:
    await graph.resolve(account, [["identity:1"], ["objectId:d"], ["anonymousId:x"]])
    await graph.resolve(account, [["identity:1", "objectId:d", "anonymousId:x", "Email:a@x.co"]])
    await graph.finish_merges([m for m in await graph.pending_merges() if m.account == account])

    split = await graph.split(account, "1", [("2", ["objectId:d"]), ("3", ["anonymousId:x"])])

    assert [source for source, _ in split.parts] == ["2", "3"]
    (_, device_user), (_, anon_user) = split.parts
    assert await graph.lookup(account, ["objectId:d", "anonymousId:x"]) == [device_user, anon_user]
    # What no part took (the survivor's own identity, an email added since) stays together.
    assert await graph.lookup(account, ["identity:1", "Email:a@x.co"]) == [split.into, split.into]
    assert await graph.identifiers(account, split.into) == ["Email:a@x.co", "identity:1"]
    assert await graph.current(account, "1") == split.into
    assert [m for m in await graph.pending_merges() if m.account == account] == [split]
    with pytest.raises(Exception, match="merged away"):
        await graph.split(account, "1", [])
