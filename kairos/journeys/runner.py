"""A journey actor's loop: read what came in, move users along, make it durable.

Each step reads the partitions' inboxes (events forwarded by the shards) and the
signal streams of the live segments journeys enter on, runs the schedules come due,
hands all of it with the current time to the engine (which also fires due waits),
and commits the engine's changes together with how far every input was read. One
step at a time, under a lock that operator actions (refresh, move) share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Protocol

from kairos import keys
from kairos.journeys.catalog import JourneyCatalog
from kairos.journeys.clock import Clock
from kairos.journeys.definition import ScheduleEntry
from kairos.journeys.engine import JourneyEngine, Lookups
from kairos.journeys.model import SegmentSignalIn, Trigger, trigger_list_decoder
from kairos.journeys.state_store import SEP, JourneyStateStore

logger = logging.getLogger(__name__)

READ_COUNT = 500  # stream entries per stream per step
# Members of a schedule run entered per step: a run over a million members goes in
# steps whose commits stay small, between which events keep flowing.
SCHEDULE_CHUNK = 20_000
RESYNC_S = 30.0  # catalog re-read, in case a refresh missed this actor
TRIM_EVERY_S = 10.0


class SegmentSource(Protocol):
    async def get(self, account: str, name: str) -> Any: ...


class ScheduleLookups(Lookups, Protocol):
    async def segment_users(self, account: str, definition: Any, now_ms: int, tz: str) -> list[str]: ...


def _sig_field(account: str, segment: str) -> str:
    return f"sig{SEP}{account}{SEP}{segment}"


def _sched_field(account: str, name: str) -> str:
    return f"sched{SEP}{account}{SEP}{name}"


class JourneyRunner:
    def __init__(self, store: JourneyStateStore, catalog: JourneyCatalog, segments: SegmentSource,
                 lookups: ScheduleLookups, clock: Clock, poll_ms: int = 200,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.store = store
        self.catalog = catalog
        self.segments = segments
        self.lookups = lookups
        self.clock = clock
        self.poll_ms = poll_ms
        self.engine = JourneyEngine(lookups, store)
        self.partitions = store.partitions
        self._lock = asyncio.Lock()
        self._read_at: dict[str, str] = {}  # stream -> last id read (and committed)
        self._schedules_done: dict[str, int] = {}
        # Schedule runs under way: cursor field -> (run time, members not yet entered).
        self._schedule_runs: dict[str, tuple[int, list[str]]] = {}
        self._on_failure = on_failure
        self._task: asyncio.Task[None] | None = None
        self._loaded = False
        self.steps = 0
        self.failure: BaseException | None = None

    # --- start --------------------------------------------------------------------------

    async def load(self) -> None:
        if self._loaded:
            return
        async with self._lock:
            if self._loaded:
                return
            for account, saved in (await self.catalog.everything()).items():
                self.engine.set_journeys(account, saved)
            self.engine.load(await self.store.load_positions())
            cursors = await self.store.load_cursors()
            for p in self.partitions:
                self._read_at[keys.journey_inbox(p)] = cursors[p].get("inbox", "0-0")
            for name, value in cursors[self.partitions[0]].items() if self.partitions else ():
                if name.startswith("sig" + SEP):
                    _, account, segment = name.split(SEP, 2)
                    # Partitions commit together; the least of them is where all are.
                    value = min((cursors[p].get(name, value) for p in self.partitions), key=_id_order)
                    self._read_at[keys.segment_signals(account, segment)] = value
                elif name.startswith("sched" + SEP):
                    self._schedules_done[name] = min(int(cursors[p].get(name, value)) for p in self.partitions)
            await self._watch_new_segments()
            self._loaded = True

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run_forever())

    async def _run_forever(self) -> None:
        await self.load()
        last_sync = last_trim = time.monotonic()
        while True:
            try:
                await self.step()
                if time.monotonic() - last_sync >= RESYNC_S:
                    last_sync = time.monotonic()
                    for account in await self.catalog.accounts():
                        await self.refresh(account)
                if time.monotonic() - last_trim >= TRIM_EVERY_S:
                    last_trim = time.monotonic()
                    await self._trim_inboxes()
            except Exception as exc:
                # Memory may be ahead of Redis now: the actor must restart and reload.
                logger.exception("journey step failed")
                self.failure = exc
                if self._on_failure is not None:
                    self._on_failure(exc)
                return

    # --- steps --------------------------------------------------------------------------

    async def step(self) -> int:
        """One round of inputs; returns how many inputs it took."""
        now = await self.clock.now_ms()
        block = self._block_ms(now)
        found = await self.store.read(dict(self._read_at), READ_COUNT, block)
        async with self._lock:
            now = await self.clock.now_ms()
            events: list[Trigger] = []
            signals: list[SegmentSignalIn] = []
            read_to: dict[str, str] = {}
            owned = set(self.partitions)
            for stream, entries in found:
                if stream not in self._read_at:
                    continue  # a segment no journey enters on any more
                read_to[stream] = entries[-1][0].decode()
                if stream.endswith(":journey-inbox"):
                    for _, fields in entries:
                        events.extend(trigger_list_decoder.decode(fields[b"t"]))
                else:
                    account, segment = _signal_stream_parts(stream)
                    for _, fields in entries:
                        user = fields[b"u"].decode()
                        if self.store.partition_of(account, user) in owned:
                            signals.append(SegmentSignalIn(account, segment, user, fields[b"e"] == b"1"))
            scheduled, schedule_cursors = await self._due_schedules(now)
            await self.engine.process(now, events, signals, scheduled)
            cursors = self._cursor_fields(read_to, schedule_cursors)
            await self.store.commit(self.engine.take_changes(), cursors)
            self._read_at.update(read_to)
            for name, value in schedule_cursors.items():
                self._schedules_done[name] = int(value)
            self.steps += 1
            return len(events) + len(signals) + sum(len(users) for *_, users in scheduled)

    def _block_ms(self, now: int) -> int | None:
        """How long a read may wait for input: until the next wait comes due (never
        for a manual clock, whose time jumps), at most `poll_ms`; None: do not wait."""
        if self.engine.has_ready() or self.engine.timers_due(now) or self._schedule_runs:
            return None
        due = self.engine.next_due_ms()
        if due is None or self.clock.manual:
            return self.poll_ms
        return max(1, min(self.poll_ms, due - now))

    def _cursor_fields(self, read_to: dict[str, str], schedules: dict[str, str]) -> dict[int, dict[str, str]]:
        shared = dict(schedules)
        for stream, last in read_to.items():
            if not stream.endswith(":journey-inbox"):
                shared[_sig_field(*_signal_stream_parts(stream))] = last
        cursors: dict[int, dict[str, str]] = {}
        for p in self.partitions:
            fields = dict(shared)
            inbox = keys.journey_inbox(p)
            if inbox in read_to:
                fields["inbox"] = read_to[inbox]
            if fields:
                cursors[p] = fields
        return cursors

    async def _due_schedules(self, now: int) -> tuple[list[tuple[str, str, int, list[str]]], dict[str, str]]:
        """This step's part of the schedule runs come due, and the runs it completes.
        A run is noted done only with its last part; after a crash it starts over, and
        the engine skips the members who entered in it already."""
        scheduled: list[tuple[str, str, int, list[str]]] = []
        cursors: dict[str, str] = {}
        for account, name, journey in self.engine.scheduled_journeys():
            entry = journey.entry
            assert isinstance(entry, ScheduleEntry)
            field = _sched_field(account, name)
            if field not in self._schedule_runs:
                last = self._schedules_done.get(field)
                run_at = _latest_run(entry, now)
                if run_at is None or (last is not None and run_at <= last):
                    continue
                segment = await self.segments.get(account, entry.segment)
                if segment is None:
                    logger.error("journey %r of %s: its schedule's segment %r does not exist; run skipped",
                                 name, account, entry.segment)
                    members: list[str] = []
                else:
                    members = await self.lookups.segment_users(account, segment.definition, now, journey.tz)
                self._schedule_runs[field] = (run_at, members)
            run_at, members = self._schedule_runs[field]
            part, rest = members[:SCHEDULE_CHUNK], members[SCHEDULE_CHUNK:]
            scheduled.append((account, name, run_at, part))
            if rest:
                self._schedule_runs[field] = (run_at, rest)
            else:
                del self._schedule_runs[field]
                cursors[field] = str(run_at)
        return scheduled, cursors

    # --- operator actions ------------------------------------------------------------------

    async def refresh(self, account: str) -> None:
        await self.load()
        saved = await self.catalog.all(account)
        async with self._lock:
            self.engine.set_journeys(account, saved)
            await self._watch_new_segments()
            await self.store.commit(self.engine.take_changes(), {})

    async def move(self, account: str, name: str, from_version: int, nodes: dict[str, str]) -> int:
        await self.load()
        async with self._lock:
            moved = self.engine.move(account, name, from_version, nodes, await self.clock.now_ms())
            await self.store.commit(self.engine.take_changes(), {})
            return moved

    async def _watch_new_segments(self) -> None:
        """A segment a journey newly enters on is read from its newest signal on; that
        starting point is made durable at once, or a restart would start later."""
        fresh: dict[str, str] = {}
        for account, segment in self.engine.signal_segments():
            stream = keys.segment_signals(account, segment)
            if stream not in self._read_at:
                fresh[stream] = self._read_at[stream] = await self.store.last_id(stream)
        if fresh:
            await self.store.commit(self.engine.take_changes(), self._cursor_fields(fresh, {}))

    async def _trim_inboxes(self) -> None:
        for p in self.partitions:
            stream = keys.journey_inbox(p)
            await self.store.trim_through(stream, self._read_at[stream])


def _signal_stream_parts(stream: str) -> tuple[str, str]:
    # kairos:a:<account>:signals:<segment>; account ids hold no ':'.
    rest = stream[len(keys.PREFIX) + 2:]
    account, _, segment = rest.partition(":signals:")
    return account, segment


def _id_order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _latest_run(entry: ScheduleEntry, now: int) -> int | None:
    """The latest scheduled run at or before `now` (runs missed while down collapse into one)."""
    if now < entry.at_ms:
        return None
    if entry.every_ms is None:
        return entry.at_ms
    return entry.at_ms + (now - entry.at_ms) // entry.every_ms * entry.every_ms
