"""Saved journeys: per account in Redis, with every version still in use.

A save validates the definition and adds a version; the old versions stay, because
users in flight stay on the version they entered. Versions never repeat, not even
after a delete, so a version number always names one definition.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from kairos import keys
from kairos.journeys import counters
from kairos.journeys.definition import Journey, JourneyError, ScheduleEntry, SegmentEntry, parse_journey
from kairos.journeys.model import ACTIVE, PAUSED, SavedJourney, saved_journey_decoder
from kairos.segments.catalog import SegmentCatalog, read_for_save
from kairos.segments.catalog import check_name as check_segment_name

MAX_JOURNEYS = 500
MAX_VERSIONS = 100


def check_name(name: str) -> str:
    return check_segment_name(name, "journey")


class JourneyCatalog:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def save(self, account: str, name: str, definition: Any, description: str | None = None) -> SavedJourney:
        """Save a new version (`description` None keeps the one saved before)."""
        check_name(name)
        journey = parse_journey(definition)
        await self._check_segment(account, journey)
        if description is not None and len(description) > 1000:
            raise JourneyError("description", "is longer than 1000 characters")
        key, versions = keys.journeys(account), keys.journey_versions(account)
        now = int(time.time() * 1000)

        async def write(pipe: Pipeline) -> SavedJourney:
            old_raw, version = await read_for_save(pipe, key, versions, name, MAX_JOURNEYS, JourneyError(
                "name", f"the account already has {MAX_JOURNEYS} journeys"))
            old = saved_journey_decoder.decode(old_raw) if old_raw else None
            definitions = dict(old.definitions) if old else {}
            if len(definitions) >= MAX_VERSIONS:
                raise JourneyError("definition", f"the journey has users on {MAX_VERSIONS} versions; move"
                                                 " them to the current one (or wait for them to finish)")
            definitions[version] = definition
            kept = description if description is not None else (old.description if old else "")
            saved = SavedJourney(name, version, old.status if old else ACTIVE, definitions, kept,
                                 old.created_ms if old else now, now)
            pipe.multi()
            if old is None:
                # Counters a step left behind after an earlier journey of this name was deleted.
                pipe.delete(keys.journey_stats(account, name))
            pipe.hset(key, name, msgspec.msgpack.encode(saved))
            pipe.hset(versions, name, version)
            pipe.sadd(keys.JOURNEY_ACCOUNTS, account)
            return saved

        # WATCH makes the version bump and the limits safe against a concurrent save.
        return await self._redis.transaction(write, key, versions, value_from_callable=True)

    async def _update(self, account: str, name: str, change: Callable[[SavedJourney], bool]) -> SavedJourney | None:
        """Read, change and write back a saved journey under WATCH; `change` says whether
        it changed anything. None when there is no such journey."""
        key = keys.journeys(account)

        async def write(pipe: Pipeline) -> SavedJourney | None:
            raw = await pipe.hget(key, name)
            if raw is None:
                return None
            saved = saved_journey_decoder.decode(raw)
            if change(saved):
                pipe.multi()
                pipe.hset(key, name, msgspec.msgpack.encode(saved))
            return saved

        return await self._redis.transaction(write, key, value_from_callable=True)

    async def prune(self, account: str, name: str) -> None:
        """Drop the old versions no one is on (waiting at a node or in the goal window).
        Call it once every journey actor has taken up the current version: from then on
        only that one gains users, so an old version whose count is 0 stays empty."""
        held = counters.users_on(await self.stats(account, name))

        def drop_empty(saved: SavedJourney) -> bool:
            kept = {v: d for v, d in saved.definitions.items() if v == saved.version or held.get(v, 0) > 0}
            changed = len(kept) < len(saved.definitions)
            saved.definitions = kept
            return changed

        await self._update(account, name, drop_empty)

    async def journeys_entering_on(self, account: str, segment: str, signals_only: bool = False) -> list[str]:
        """Journeys that enter on the segment (any version still kept); with
        `signals_only`, just those entered on its live signals (not on a schedule)."""
        kinds = (SegmentEntry,) if signals_only else (SegmentEntry, ScheduleEntry)
        found = []
        for saved in await self.all(account):
            for definition in saved.definitions.values():
                entry = parse_journey(definition).entry
                if isinstance(entry, kinds) and entry.segment == segment:
                    found.append(saved.name)
                    break
        return found

    async def _check_segment(self, account: str, journey: Journey) -> None:
        """A journey entered on a segment needs it saved, and live if entered on its signals."""
        entry = journey.entry
        if isinstance(entry, SegmentEntry):
            path, live_needed = "definition.entry.segment", True
        elif isinstance(entry, ScheduleEntry):
            path, live_needed = "definition.entry.schedule.segment", False
        else:
            return
        segment = await SegmentCatalog(self._redis).get(account, entry.segment)
        if segment is None:
            raise JourneyError(path, f"there is no saved segment named {entry.segment!r}")
        if live_needed and not segment.live:
            raise JourneyError(path, f"segment {entry.segment!r} is not live: save it with \"live\": true so that"
                                     " entering it signals")

    async def set_status(self, account: str, name: str, status: str) -> SavedJourney | None:
        assert status in (ACTIVE, PAUSED), status

        def set_it(saved: SavedJourney) -> bool:
            saved.status, saved.updated_ms = status, int(time.time() * 1000)
            return True

        return await self._update(account, name, set_it)

    async def get(self, account: str, name: str) -> SavedJourney | None:
        raw = await self._redis.hget(keys.journeys(account), name)
        return saved_journey_decoder.decode(raw) if raw else None

    async def all(self, account: str) -> list[SavedJourney]:
        raw = await self._redis.hgetall(keys.journeys(account))
        return sorted((saved_journey_decoder.decode(v) for v in raw.values()), key=lambda j: j.name)

    async def delete(self, account: str, name: str) -> bool:
        """Forget the journey and its counters; users in it leave it (the version number stays taken)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.journeys(account), name)
            pipe.delete(keys.journey_stats(account, name))
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def accounts(self) -> list[str]:
        return sorted(a.decode() for a in await self._redis.smembers(keys.JOURNEY_ACCOUNTS))

    async def everything(self) -> dict[str, list[SavedJourney]]:
        return {account: await self.all(account) for account in await self.accounts()}

    async def stats(self, account: str, name: str) -> dict[str, int]:
        raw = await self._redis.hgetall(keys.journey_stats(account, name))
        return {k.decode(): int(v) for k, v in raw.items()}
