"""A journey actor's loop: read what came in, move users along, make it durable.

Each step reads the partitions' inboxes (events forwarded by the shards) and the
signal streams of the live segments journeys enter on, runs the schedules come due,
hands all of it with the current time to the engine (which also fires due waits),
and commits the engine's changes together with how far every input was read. One
step at a time, under a lock that operator actions (refresh, move) share.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from kairos import keys
from kairos.journeys.catalog import JourneyCatalog
from kairos.journeys.clock import Clock
from kairos.journeys.definition import ScheduleEntry
from kairos.journeys.engine import JourneyEngine, Lookups
from kairos.journeys.model import SegmentSignalIn, Trigger, trigger_list_decoder
from kairos.journeys.state_store import SEP, JourneyStateStore
from kairos.log import stream_id_order
from kairos.step_loop import StepLoop

logger = logging.getLogger(__name__)

READ_COUNT = 500  # stream entries per stream per step
# Members of a schedule run entered per step: a run over a million members goes in
# steps whose commits stay small, between which events keep flowing.
SCHEDULE_CHUNK = 20_000


class SegmentSource(Protocol):
    async def get(self, account: str, name: str) -> Any: ...


class ScheduleLookups(Lookups, Protocol):
    async def segment_users(self, account: str, definition: Any, now_ms: int, tz: str) -> list[str]: ...


def _sig_field(account: str, segment: str) -> str:
    return f"sig{SEP}{account}{SEP}{segment}"


def _sched_field(account: str, name: str) -> str:
    return f"sched{SEP}{account}{SEP}{name}"


class JourneyRunner(StepLoop):
    name = "journey runner"

    def __init__(self, store: JourneyStateStore, catalog: JourneyCatalog, segments: SegmentSource,
                 lookups: ScheduleLookups, clock: Clock, poll_ms: int = 200,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        super().__init__(on_failure)
        self.store = store
        self.catalog = catalog
        self.segments = segments
        self.lookups = lookups
        self.clock = clock
        self.poll_ms = poll_ms
        self.engine = JourneyEngine(lookups, store)
        self.partitions = store.partitions
        self._inboxes = {keys.journey_inbox(p): p for p in self.partitions}
        # Signal streams read: stream -> (account, segment) of a live segment journeys enter on.
        self._signal_streams: dict[str, tuple[str, str]] = {}
        self._read_at: dict[str, str] = {}  # stream -> last id read (and committed)
        self._schedules_done: dict[str, int] = {}
        # Schedule runs under way: cursor field -> (run time, members not yet entered).
        self._schedule_runs: dict[str, tuple[int, list[str]]] = {}

    # --- start --------------------------------------------------------------------------

    async def _load(self) -> None:
        for account, saved in (await self.catalog.everything()).items():
            self.engine.set_journeys(account, saved)
        self.engine.load(await self.store.load_positions())
        cursors = await self.store.load_cursors()
        for stream, p in self._inboxes.items():
            self._read_at[stream] = cursors[p].get("inbox", "0-0")
        entered_on = set(self.engine.signal_segments())
        for name in cursors[self.partitions[0]] if self.partitions else ():
            # Partitions commit together; the least of them is where all of them are.
            values = [cursors[p][name] for p in self.partitions if name in cursors[p]]
            if name.startswith("sig" + SEP):
                _, account, segment = name.split(SEP, 2)
                if (account, segment) in entered_on:  # else no journey enters on it any more
                    self._read_at[keys.segment_signals(account, segment)] = min(values, key=stream_id_order)
            elif name.startswith("sched" + SEP):
                self._schedules_done[name] = min(int(v) for v in values)
        await self._sync_signal_streams()

    async def _commit(self, cursors: dict[int, dict[str, str]]) -> None:
        try:
            await self.store.commit(self.engine.take_changes(), cursors)
        except Exception as exc:
            self._fail(exc)
            raise

    # --- steps --------------------------------------------------------------------------

    async def step(self) -> int:
        """One round of inputs; returns how many inputs it took. Within a round, events
        go first, then segment signals, then schedule runs, then the waits come due."""
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
                read_to[stream] = entries[-1][0].decode()
                if stream in self._inboxes:
                    for entry_id, fields in entries:
                        # The entry's id is its batch's log id: when the shard took the events.
                        ingested_ms = stream_id_order(entry_id.decode())[0]
                        for trigger in trigger_list_decoder.decode(fields[b"t"]):
                            trigger.ingested_ms = ingested_ms
                            events.append(trigger)
                elif stream in self._signal_streams:
                    account, segment = self._signal_streams[stream]
                    for _, fields in entries:
                        user = fields[b"u"].decode()
                        if self.store.partition_of(account, user) in owned:
                            signals.append(SegmentSignalIn(account, segment, user, fields[b"e"] == b"1"))
            scheduled, schedule_cursors = await self._due_schedules(now)
            await self.engine.process(now, events, signals, scheduled)
            await self._commit(self._cursor_fields(read_to, schedule_cursors))
            self._read_at.update((s, i) for s, i in read_to.items() if s in self._inboxes or s in self._signal_streams)
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
            if stream in self._signal_streams:
                shared[_sig_field(*self._signal_streams[stream])] = last
        cursors: dict[int, dict[str, str]] = {}
        for stream, p in self._inboxes.items():
            fields = dict(shared)
            if stream in read_to:
                fields["inbox"] = read_to[stream]
            if fields:
                cursors[p] = fields
        return cursors

    async def _due_schedules(self, now: int) -> tuple[list[tuple[str, str, int, list[str]]], dict[str, str]]:
        """This step's part of the schedule runs come due, and the runs it completes.
        A run is noted done only with its last part; after a crash it starts over, and
        the engine skips the members who entered in it already."""
        scheduled: list[tuple[str, str, int, list[str]]] = []
        cursors: dict[str, str] = {}
        active = {_sched_field(account, name): (account, name, journey)
                  for account, name, journey in self.engine.scheduled_journeys()}
        for field in [f for f in self._schedule_runs if f not in active]:
            del self._schedule_runs[field]  # paused or deleted part-way: it runs afresh on resume
        for field, (account, name, journey) in active.items():
            entry = journey.entry
            assert isinstance(entry, ScheduleEntry)
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
        async with self._lock:
            # Read under the lock: a read that overtook a later one would put an older
            # catalog back over a newer one.
            self.engine.set_journeys(account, await self.catalog.all(account))
            await self._sync_signal_streams()
            await self._commit({})

    async def move(self, account: str, name: str, from_version: int, nodes: dict[str, str]) -> int:
        await self.load()
        async with self._lock:
            moved = self.engine.move(account, name, from_version, nodes, await self.clock.now_ms())
            await self._commit({})
            return moved

    async def _sync_signal_streams(self) -> None:
        """Read the signal streams of the live segments journeys enter on now, and no
        others. A new one is read from its newest signal on; that starting point is made
        durable at once, or a restart would start later."""
        wanted = {keys.segment_signals(a, s): (a, s) for a, s in self.engine.signal_segments()}
        for stream in [s for s in self._signal_streams if s not in wanted]:
            del self._signal_streams[stream]
            self._read_at.pop(stream, None)
        fresh: dict[str, str] = {}
        for stream, names in wanted.items():
            self._signal_streams[stream] = names
            if stream not in self._read_at:
                fresh[stream] = self._read_at[stream] = await self.store.last_id(stream)
        if fresh:
            await self._commit(self._cursor_fields(fresh, {}))

    async def _trim(self) -> None:
        for stream in self._inboxes:
            await self.store.trim_through(stream, self._read_at[stream])


def _latest_run(entry: ScheduleEntry, now: int) -> int | None:
    """The latest scheduled run at or before `now` (runs missed while down collapse into one)."""
    if now < entry.at_ms:
        return None
    if entry.every_ms is None:
        return entry.at_ms
    return entry.at_ms + (now - entry.at_ms) // entry.every_ms * entry.every_ms
