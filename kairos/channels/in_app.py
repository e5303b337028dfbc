"""In-app messages and the app inbox: stored per user in Redis, listed and marked read
through the gateway, and announced on a pub/sub channel that the gateway's server-sent
events stream relays to an open app. Delivery here is final: once stored, the message is
the user's (it is "delivered" in the sense CleverTap's inbox uses).
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kairos import keys
from kairos.channels.base import Delivery, Outcome, delivered, transient
from kairos.journeys.clock import Clock
from kairos.segments.definition import parse_duration

# An inbox keeps the newest messages only: an app shows a screenful, not a history.
MAX_MESSAGES = 100


class InboxMessage(msgspec.Struct, frozen=True):
    id: str
    at_ms: int
    message: dict[str, Any]
    read: bool = False
    expires_ms: int | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(InboxMessage).decode
_to_json = msgspec.json.Encoder().encode


class Inbox:
    """One account's users' inboxes."""

    def __init__(self, client: aioredis.Redis, clock: Clock) -> None:
        self._redis = client
        self.clock = clock

    async def put_many(self, items: list[tuple[str, str, InboxMessage]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for account, user, item in items:
                pipe.hset(keys.inbox(account, user), item.id, _encode(item))
                pipe.hlen(keys.inbox(account, user))
                pipe.publish(keys.inbox_live(account, user), _to_json(item))
            answers = await pipe.execute()
        for (account, user, _), size in zip(items, answers[1::3]):
            if size > MAX_MESSAGES:
                await self._trim(keys.inbox(account, user))

    async def _trim(self, key: str) -> None:
        items = sorted((_decode(raw) for raw in (await self._redis.hgetall(key)).values()), key=lambda m: m.at_ms)
        stale = [m.id for m in items[:-MAX_MESSAGES]]
        if stale:
            await self._redis.hdel(key, *stale)

    async def list(self, account: str, user: str, unread_only: bool = False) -> list[InboxMessage]:
        """Newest first, without the expired ones."""
        now = await self.clock.now_ms()
        items = [_decode(raw) for raw in (await self._redis.hgetall(keys.inbox(account, user))).values()]
        live = [m for m in items if (m.expires_ms is None or m.expires_ms > now) and not (unread_only and m.read)]
        return sorted(live, key=lambda m: m.at_ms, reverse=True)

    async def mark_read(self, account: str, user: str, ids: list[str]) -> int:
        """Marks the messages read; how many of them were there."""
        key = keys.inbox(account, user)
        found = await self._redis.hmget(key, ids) if ids else []
        updates = {i: _encode(msgspec.structs.replace(_decode(raw), read=True)) for i, raw in zip(ids, found) if raw}
        if updates:
            await self._redis.hset(key, mapping=updates)  # type: ignore[arg-type]
        return len(updates)


class InAppProvider:
    channel = "in_app"

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    async def send(self, delivery: Delivery) -> Outcome:
        return (await self.send_many([delivery]))[0]

    async def send_many(self, deliveries: list[Delivery]) -> list[Outcome]:
        """One pipelined write for a batch of messages."""
        now = await self._inbox.clock.now_ms()
        items = []
        for delivery in deliveries:
            message = dict(delivery.message)
            expires = message.pop("expires", None)
            expires_ms = now + parse_duration(expires, "message.expires") if isinstance(expires, str) else None
            items.append((delivery.account, delivery.user, InboxMessage(delivery.send_id, now, message, False, expires_ms)))
        try:
            await self._inbox.put_many(items)
        except RedisError as exc:
            return [transient(f"inbox store: {exc}")] * len(deliveries)
        return [delivered(d.send_id, final=True) for d in deliveries]

    async def close(self) -> None:
        return None
