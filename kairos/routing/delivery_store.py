"""What the channel router keeps in Redis, and how it writes it: each user's recent sends
(caps and dedupe), the delayed set (quiet hours, throttle, retry backoff), the outbox
cursors, dead letters, counters, and the delivery events waiting to go back into ingest.

Every decision about a batch is written in one MULTI/EXEC with the cursor that moved
past it, so after a crash (or a round that fails) a request is either decided (and its
id is in the user's history, which stops it from being sent again) or read again.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from kairos import keys
from kairos.journeys.model import SendRequest
from kairos.models import Record
from kairos.partitions import PartitionMap
from kairos.routing import feedback
from kairos.routing.caps import Sent
from kairos.routing.tracking import TrackedLink

# History states: waiting in the delayed set, handed to a provider (outcome not yet
# known), delivered, sent and waiting for its arrival receipt (else the next channel
# goes), or given up on (dropped or failed).
QUEUED, CLAIMED, DELIVERED, AWAITING, GIVEN_UP = "q", "c", "d", "a", "x"
COUNTED = frozenset({CLAIMED, DELIVERED, AWAITING})  # what frequency caps count
WAITING = frozenset({QUEUED, AWAITING})  # entries with a delayed-set member that needs them
DEDUPE_WINDOW_MS = 7 * 86_400_000
MAX_HISTORY = 200
DEAD_LETTERS_KEPT = 10_000


NOT_ARRIVED, ARRIVED = b"0", b"1"
# How long a provider's late report (an SES bounce) can still be traced to its send.
PROVIDER_REPORTS_KEPT_MS = 3 * 86_400_000
_link_decoder = msgspec.msgpack.Decoder(TrackedLink)


async def sent_as(client: aioredis.Redis, account: str, provider_id: str) -> TrackedLink | None:
    """The account's send a provider's message id stands for (None: unknown, or too old)."""
    raw = await client.get(keys.provider_message(account, provider_id))
    return _link_decoder.decode(raw) if raw else None


def received(client: aioredis.Redis | Pipeline, partition: int, send_id: str) -> Any:
    """Notes that the message `send_id` reached its user (the app reported it, or the user
    saw or tapped it), when the router awaits that to decide on a fallback: awaitable on
    a client, queued on a pipeline."""
    return client.set(keys.arrival_receipt(partition, send_id), ARRIVED, xx=True, keepttl=True)


class HistoryEntry(Sent, frozen=True, array_like=True, gc=False):
    send_id: str = ""
    state: str = QUEUED


class Pending(msgspec.Struct, array_like=True, frozen=True):
    """A request in the delayed set, with where it is in its channels and retries."""

    request: SendRequest
    channel_index: int = 0
    attempt: int = 0
    first_try_ms: int = 0  # when its current channel was first tried (0: not yet)
    # Sent on `channel_index`: due when its arrival receipt should have come (see `received`).
    awaiting_receipt: bool = False
    # Not decided yet: set aside while the user's previous batch was with its provider.
    held: bool = False


class InFlight(msgspec.Struct, array_like=True, frozen=True):
    """A request handed to its provider, until its outcome is written."""

    send_id: str
    account: str
    user: str
    channel: str
    source_kind: str
    source: str
    node: str
    variant: str | None = None


def source_counters(source_kind: str, source: str, variant: str | None, outcome: str) -> tuple[str, ...]:
    """The delivery counters an outcome moves for its source (a journey or campaign), and
    for its A/B variant too when it has one: `<kind>:<source>|<outcome>`,
    `<kind>:<source>#<variant>|<outcome>`."""
    base = f"{source_kind}:{source}"
    if variant is None:
        return (f"{base}|{outcome}",)
    return f"{base}|{outcome}", f"{base}#{variant}|{outcome}"


UserRef = tuple[str, str]  # (account, user)

_history_decoder = msgspec.msgpack.Decoder(list[HistoryEntry])
_pending_decoder = msgspec.msgpack.Decoder(Pending)
_in_flight_decoder = msgspec.msgpack.Decoder(list[InFlight])
_encode = msgspec.msgpack.Encoder().encode


def decode_pending(raw: bytes) -> Pending:
    return _pending_decoder.decode(raw)


def encode_pending(pending: Pending) -> bytes:
    return _encode(pending)


def encode_in_flight(claims: list[InFlight]) -> bytes:
    return _encode(claims)


def history_field(account: str, user: str) -> str:
    return f"{account}\0{user}"


def trimmed(entries: list[HistoryEntry], horizon_ms: int, now_ms: int) -> list[HistoryEntry]:
    """The entries that still matter: within the caps' horizon or the dedupe window, and
    every request still waiting in the delayed set (its entry is what lets it go out)."""
    since = now_ms - max(horizon_ms, DEDUPE_WINDOW_MS)
    waiting = [e for e in entries if e.state in WAITING]
    recent = [e for e in entries if e.state not in WAITING and e.at_ms >= since]
    room = max(0, MAX_HISTORY - len(waiting))
    return sorted(waiting + (recent[-room:] if room else []), key=lambda e: e.at_ms)


class Commit:
    """Writes for one MULTI/EXEC, gathered while a batch is decided."""

    def __init__(self) -> None:
        self.histories: dict[tuple[int, str], list[HistoryEntry]] = {}
        self.delayed: dict[int, list[tuple[bytes, int]]] = {}
        self.undelayed: dict[int, list[bytes]] = {}
        self.cursors: dict[int, str] = {}
        self.events: dict[int, list[tuple[str, Record]]] = {}  # partition -> (account, record)
        self.dead: dict[str, list[dict[str, Any]]] = {}
        self.stats: dict[str, dict[str, int]] = {}
        # Batches of requests handed to providers whose outcomes are not written yet (one
        # field per partition and batch: a write per batch, not per message), and those settled.
        self.claimed: dict[int, dict[str, bytes]] = {}
        self.settled: dict[int, list[str]] = {}
        # Sends whose arrival receipt is awaited (partition -> (send id, how long)), and
        # those looked at.
        self.awaiting: dict[int, list[tuple[str, int]]] = {}
        self.receipts_read: dict[int, list[str]] = {}
        # (account, provider message id) -> the send it is, for the provider's later reports.
        self.provider_messages: dict[tuple[str, str], TrackedLink] = {}

    def count(self, account: str, *fields: str) -> None:
        counters = self.stats.setdefault(account, {})
        for name in fields:
            counters[name] = counters.get(name, 0) + 1

    def __bool__(self) -> bool:
        return any((self.histories, self.delayed, self.undelayed, self.cursors, self.events, self.dead, self.stats,
                    self.claimed, self.settled, self.awaiting, self.receipts_read, self.provider_messages))


class DeliveryStore:
    def __init__(self, client: aioredis.Redis, partition_map: PartitionMap, partitions: list[int]) -> None:
        self.redis = client
        self.partition_map = partition_map
        self.partitions = partitions

    def partition_of(self, account: str, user: str) -> int:
        return self.partition_map.partition_of(account, user)

    async def cursors(self) -> dict[int, str]:
        """Partition -> the outbox id its requests are decided up to."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in self.partitions:
                pipe.get(keys.router_cursor(p))
            found = await pipe.execute()
        return {p: (raw.decode() if raw else "0-0") for p, raw in zip(self.partitions, found)}

    async def histories(self, users: Iterable[UserRef]) -> dict[UserRef, list[HistoryEntry]]:
        by_partition: dict[int, list[UserRef]] = {}
        for ref in dict.fromkeys(users):
            by_partition.setdefault(self.partition_of(*ref), []).append(ref)
        if not by_partition:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, refs in by_partition.items():
                pipe.hmget(keys.send_history(partition), [history_field(*ref) for ref in refs])
            found = await pipe.execute()
        return {ref: (_history_decoder.decode(raw) if raw else [])
                for refs, raws in zip(by_partition.values(), found) for ref, raw in zip(refs, raws)}

    async def due(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        """Delayed members whose time has come: (partition, member)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in self.partitions:
                pipe.zrangebyscore(keys.router_delayed(p), "-inf", now_ms, start=0, num=limit)
            found = await pipe.execute()
        return [(p, member) for p, members in zip(self.partitions, found) for member in members]

    async def in_flight(self) -> dict[int, dict[str, list[InFlight]]]:
        """Partition -> batch id -> the requests a router handed to a provider and then
        stopped before it wrote their outcomes."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in self.partitions:
                pipe.hgetall(keys.router_in_flight(p))
            found = await pipe.execute()
        return {p: {k.decode(): _in_flight_decoder.decode(v) for k, v in claims.items()}
                for p, claims in zip(self.partitions, found) if claims}

    async def scan_histories(self, partition: int, cursor: int, count: int) -> tuple[int, dict[str, list[HistoryEntry]]]:
        """A page of the partition's histories (HSCAN): the next cursor (0: done), field -> entries."""
        following, found = await self.redis.hscan(keys.send_history(partition), cursor, count=count)
        return following, {field.decode(): _history_decoder.decode(raw) for field, raw in found.items()}

    async def rewrite_histories(self, partition: int, gone: list[str], kept: dict[str, list[HistoryEntry]]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            if gone:
                pipe.hdel(keys.send_history(partition), *gone)
            if kept:
                pipe.hset(keys.send_history(partition), mapping={f: _encode(e) for f, e in kept.items()})  # type: ignore[arg-type]
            await pipe.execute()

    async def receipts(self, sends: Iterable[tuple[int, str]]) -> set[str]:
        """Of these (partition, send id) awaiting their arrival receipt, those that have it."""
        wanted = list(sends)
        if not wanted:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, send_id in wanted:
                pipe.get(keys.arrival_receipt(partition, send_id))
            found = await pipe.execute()
        return {send_id for (_, send_id), mark in zip(wanted, found) if mark == ARRIVED}

    async def postpone(self, members: dict[int, list[bytes]], until_ms: int) -> None:
        """Moves these delayed-set members (partition -> members) to `until_ms`, if still there."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, found in members.items():
                pipe.zadd(keys.router_delayed(partition), dict.fromkeys(found, until_ms), xx=True)
            await pipe.execute()

    async def take_throttle(self, account: str, source: str, minute: int, wanted: int) -> int:
        """Adds `wanted` sends to the source's count for `minute`; returns the count before."""
        key = keys.throttle(account, source, minute)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, wanted)
            pipe.expire(key, 180)
            total, _ = await pipe.execute()
        return int(total) - wanted

    async def stopped_campaigns(self, wanted: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (account, campaign id) have been stopped."""
        if not wanted:
            return set()
        by_account: dict[str, list[str]] = {}
        for account, campaign in wanted:
            by_account.setdefault(account, []).append(campaign)
        async with self.redis.pipeline(transaction=False) as pipe:
            for account, campaigns in by_account.items():
                pipe.smismember(keys.campaigns_stopped(account), campaigns)
            answers = await pipe.execute()
        return {(account, campaign) for (account, campaigns), flags in zip(by_account.items(), answers)
                for campaign, flag in zip(campaigns, flags) if flag}

    async def commit(self, commit: Commit) -> None:
        if not commit:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            writes: dict[int, dict[str, bytes]] = {}
            for (partition, field), entries in commit.histories.items():
                writes.setdefault(partition, {})[field] = _encode(entries)
            for partition, mapping in writes.items():
                pipe.hset(keys.send_history(partition), mapping=mapping)  # type: ignore[arg-type]
            # Removals first: a request delayed again unchanged is the same member, and
            # must stay in the set with its new score.
            for partition, members in commit.undelayed.items():
                pipe.zrem(keys.router_delayed(partition), *members)
            for partition, members in commit.delayed.items():
                pipe.zadd(keys.router_delayed(partition), {m: score for m, score in members})
            for partition, ids in commit.settled.items():
                pipe.hdel(keys.router_in_flight(partition), *ids)
            for partition, claims in commit.claimed.items():
                pipe.hset(keys.router_in_flight(partition), mapping=claims)  # type: ignore[arg-type]
            for partition, awaited in commit.awaiting.items():
                for send_id, within_ms in awaited:
                    # Kept a day past its check, in case the check runs late (a router down).
                    pipe.set(keys.arrival_receipt(partition, send_id), NOT_ARRIVED, px=within_ms + 86_400_000)
            for (account, provider_id), link in commit.provider_messages.items():
                pipe.set(keys.provider_message(account, provider_id), _encode(link), px=PROVIDER_REPORTS_KEPT_MS)
            for partition, ids in commit.receipts_read.items():
                pipe.delete(*(keys.arrival_receipt(partition, i) for i in ids))
            for partition, records in commit.events.items():
                by_account: dict[str, list[Record]] = {}
                for account, record in records:
                    by_account.setdefault(account, []).append(record)
                for account, batch in by_account.items():
                    feedback.append(pipe, partition, account, batch)
            for account, letters in commit.dead.items():
                for letter in letters:
                    pipe.xadd(keys.dead_letters(account), {"d": msgspec.json.encode(letter)},
                              maxlen=DEAD_LETTERS_KEPT, approximate=True)
            for account, counters in commit.stats.items():
                for name, n in counters.items():
                    pipe.hincrby(keys.delivery_stats(account), name, n)
            for partition, cursor in commit.cursors.items():
                pipe.set(keys.router_cursor(partition), cursor)
            await pipe.execute()
