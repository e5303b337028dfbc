"""The journey engine: every user's position in every journey of the users one journey
actor owns, moved along by events, segment signals, schedules and time.

Plain Python: no Ray, no Redis. Time comes in as `now_ms`; profile conditions and
time zones come from a `Lookups` object (the shard that holds the profile), and entry
history from an `EntryHistory`. Every change lands in `Changes`, which the caller
makes durable in one transaction before it takes the next input, so a crash between
two inputs loses nothing and repeats nothing.

There is no task per waiting user: one heap of (due, journey, user) per engine, with
stale entries skipped when they surface.
"""

from __future__ import annotations

import heapq
import logging
import zlib
from datetime import datetime, time, timedelta, timezone
from typing import Any, Iterable, Protocol, Sequence

import msgspec

from kairos.journeys.definition import (
    Branch, EventEntry, EventRule, Exit, Journey, Reentry, ScheduleEntry, Send, Split, Wait, WaitForEvent, WaitUntil,
    parse_journey,
)
from kairos.journeys import counters
from kairos.journeys.event_filters import all_pass
from kairos.journeys.model import (
    ACTIVE, GOAL_NODE, PAUSED, READY, WAITING, Position, SavedJourney, SegmentSignalIn, SendRequest, Trigger,
)
from kairos.segments.timing import local_instant, zone_or

logger = logging.getLogger(__name__)

# Timers fired per `process` call: bounds one commit, so a backlog (after a restart)
# drains in steps that leave room for fresh events between them.
MAX_TIMERS_PER_BATCH = 20_000

# An event older than this (by its own time) enters no journey: a backfill of history
# must not start journeys for what users did long ago.
MAX_ENTRY_AGE_MS = 86_400_000

UserKey = tuple[str, str, str]  # account, journey, user


class Lookups(Protocol):
    async def matching(self, account: str, condition: Any, users: list[str], now_ms: int, tz: str) -> list[bool]: ...

    async def time_zones(self, account: str, users: list[str]) -> list[str | None]: ...


class EntryHistory(Protocol):
    async def entries(self, keys: list[UserKey]) -> list[tuple[int, int] | None]:
        """(how many times, last entry ms) for each user and journey; None if never."""
        ...


class Changes:
    """What one step changed, to be made durable together."""

    def __init__(self) -> None:
        self.positions: dict[UserKey, Position | None] = {}
        self.entries: dict[UserKey, tuple[int, int]] = {}
        self.sends: list[SendRequest] = []
        self.stats: dict[tuple[str, str], dict[str, int]] = {}

    def count(self, account: str, name: str, field: str, n: int = 1) -> None:
        fields = self.stats.setdefault((account, name), {})
        fields[field] = fields.get(field, 0) + n

    def __bool__(self) -> bool:
        return bool(self.positions or self.entries or self.sends or self.stats)


class _Run:
    """One journey of one account, as this engine holds it."""

    __slots__ = ("account", "name", "index", "status", "version", "versions", "positions", "held", "deleted",
                 "created_ms")

    def __init__(self, account: str, name: str, index: int) -> None:
        self.account, self.name, self.index = account, name, index
        self.status = ACTIVE
        self.version = 0
        self.versions: dict[int, Journey] = {}
        self.positions: dict[str, Position] = {}
        self.held: set[str] = set()  # users whose turn came while the journey was paused
        self.deleted = False
        self.created_ms = 0  # tells a journey deleted and saved again from the one before

    @property
    def current(self) -> Journey:
        return self.versions[self.version]


def bucket(*parts: str) -> int:
    """A stable number in [0, 100) for a user at a split: the same in every process."""
    return zlib.crc32("\x00".join(parts).encode()) % 100


def next_local_time(now_ms: int, at: time, tz_name: str | None, fallback: str) -> int:
    """The first instant after `now_ms` whose wall clock in the user's zone reads `at`."""
    tz = zone_or(tz_name, fallback)
    today = datetime.fromtimestamp(now_ms / 1000, timezone.utc).astimezone(tz).date()
    for days in range(0, 3):
        instant = local_instant(today + timedelta(days=days), at, tz)
        if instant > now_ms:
            return instant
    raise AssertionError("a time of day recurs within two days")


class JourneyEngine:
    def __init__(self, lookups: Lookups, history: EntryHistory) -> None:
        self._lookups = lookups
        self._history = history
        self._runs: dict[tuple[str, str], _Run] = {}
        self._run_list: list[_Run] = []
        self._timers: list[tuple[int, int, str]] = []
        # Heap entries whose position has moved on: skipped when they surface, and swept
        # out when they are most of the heap (a wait replaced long before its end).
        self._stale = 0
        self._by_event: dict[tuple[str, str], list[_Run]] = {}
        self._by_segment: dict[tuple[str, str], list[_Run]] = {}
        self._ready: list[tuple[_Run, str]] = []
        self._pending: dict[tuple[int, int, str], list[str]] = {}
        self._known_history: dict[UserKey, tuple[int, int]] = {}
        self.changes = Changes()

    # --- journeys -------------------------------------------------------------------

    def set_journeys(self, account: str, saved: Iterable[SavedJourney]) -> None:
        """Take up the account's journeys as saved now (new versions, pauses, deletes)."""
        seen = set()
        for journey in saved:
            seen.add(journey.name)
            run = self._runs.get((account, journey.name))
            if run is not None and run.created_ms != journey.created_ms:
                self._drop(run)  # deleted and saved again while we were not told
                run = None
            if run is None:
                run = self._runs[(account, journey.name)] = _Run(account, journey.name, len(self._run_list))
                run.created_ms = journey.created_ms
                self._run_list.append(run)
            for version, definition in journey.definitions.items():
                if version not in run.versions:
                    run.versions[version] = parse_journey(definition)
            run.version = journey.version
            was_paused, run.status = run.status == PAUSED, journey.status
            if was_paused and run.status == ACTIVE:
                self._release(run)
        for (acct, name), run in list(self._runs.items()):
            if acct == account and name not in seen:
                self._drop(run)
        self._index(account)

    def _drop(self, run: _Run) -> None:
        """A deleted journey: its users leave it, uncounted (its counters went with it)."""
        for user, pos in run.positions.items():
            self.changes.positions[(run.account, run.name, user)] = None
            self._stale += pos.phase == WAITING
        run.positions.clear()
        run.deleted = True
        del self._runs[(run.account, run.name)]

    def _index(self, account: str) -> None:
        for table in (self._by_event, self._by_segment):
            for key in [k for k in table if k[0] == account]:
                del table[key]
        for (acct, _), run in self._runs.items():
            if acct != account:
                continue
            events: set[str] = set()
            segments: set[str] = set()
            for journey in run.versions.values():
                events |= journey.event_names()
                if journey.signal_segment():
                    segments.add(journey.signal_segment())  # type: ignore[arg-type]
            for event in events:
                self._by_event.setdefault((account, event), []).append(run)
            for segment in segments:
                self._by_segment.setdefault((account, segment), []).append(run)

    def signal_segments(self) -> list[tuple[str, str]]:
        return sorted(self._by_segment)

    def scheduled_journeys(self) -> list[tuple[str, str, Journey]]:
        """(account, name, current version) of the active journeys entered on a schedule."""
        return [(run.account, run.name, run.current) for run in self._runs.values()
                if run.status == ACTIVE and isinstance(run.current.entry, ScheduleEntry)]

    def has_ready(self) -> bool:
        return bool(self._ready)

    def waiting(self) -> int:
        return sum(len(run.positions) for run in self._runs.values())

    # --- state ------------------------------------------------------------------------

    def load(self, positions: Iterable[tuple[str, str, str, Position]]) -> None:
        """Positions as last made durable (after a restart). A wait that came due while
        no one was running fires at the next `process`, once."""
        dropped = 0
        for account, name, user, pos in positions:
            run = self._runs.get((account, name))
            if run is None or pos.version not in run.versions:
                # Its journey was deleted (the delete's refresh missed us), or its version
                # was dropped from the catalog with a count of 0 that was wrong.
                self.changes.positions[(account, name, user)] = None
                dropped += 1
                continue
            run.positions[user] = pos
            if pos.phase == WAITING:
                self._timers.append((pos.due_ms, run.index, user))
            else:
                self._ready.append((run, user))
        heapq.heapify(self._timers)
        if dropped:
            logger.warning("dropped %d positions of deleted journeys or of versions no longer kept", dropped)

    def take_changes(self) -> Changes:
        changes, self.changes = self.changes, Changes()
        return changes

    def next_due_ms(self) -> int | None:
        return self._timers[0][0] if self._timers else None

    def _set(self, run: _Run, user: str, old: Position | None, new: Position | None) -> None:
        if old is not None:
            self.changes.count(run.account, run.name, _gauge(old), -1)
            if old.phase == WAITING:
                self._stale += 1
        if new is None:
            run.positions.pop(user, None)
            run.held.discard(user)
        else:
            self.changes.count(run.account, run.name, _gauge(new))
            run.positions[user] = new
            if new.phase == WAITING:
                heapq.heappush(self._timers, (new.due_ms, run.index, user))
        self.changes.positions[(run.account, run.name, user)] = new

    # --- inputs -----------------------------------------------------------------------

    async def process(
        self, now_ms: int, events: Sequence[Trigger] = (), signals: Sequence[SegmentSignalIn] = (),
        scheduled: Sequence[tuple[str, str, int, list[str]]] = (),
    ) -> None:
        """Take a batch of inputs in order, then fire the waits due by `now_ms`.
        `scheduled` holds (account, journey, run time, users) of schedule runs come due;
        a user who entered at or after that run time is in this run already."""
        await self._prefetch_history(events, signals, scheduled)
        for trigger in events:
            self._on_event(trigger, now_ms)
        for signal in signals:
            self._on_signal(signal, now_ms)
        for account, name, run_at, users in scheduled:
            run = self._runs.get((account, name))
            if run is not None:
                for user in users:
                    self._enter(run, user, now_ms, {}, not_since=run_at)
        self._fire_due(now_ms)
        ready, self._ready = self._ready, []
        for run, user in dict.fromkeys(ready):
            pos = run.positions.get(user)
            if pos is not None and pos.phase == READY and not run.deleted and user not in run.held:
                self._advance(run, user, pos, pos.node, now_ms)
        await self._resolve_pending(now_ms)
        self._known_history.clear()
        if self._stale > 100_000 and self._stale * 2 > len(self._timers):
            self._sweep_timers()

    def _sweep_timers(self) -> None:
        def live(entry: tuple[int, int, str]) -> bool:
            due, index, user = entry
            run = self._run_list[index]
            pos = run.positions.get(user)
            return not run.deleted and pos is not None and pos.phase == WAITING and pos.due_ms == due

        self._timers = [entry for entry in self._timers if live(entry)]
        heapq.heapify(self._timers)
        self._stale = 0

    async def _prefetch_history(self, events: Sequence[Trigger], signals: Sequence[SegmentSignalIn],
                                scheduled: Sequence[tuple[str, str, int, list[str]]]) -> None:
        """Entry rules need how often each would-be entrant entered before: one read."""
        wanted: set[UserKey] = set()
        for trigger in events:
            for run in self._by_event.get((trigger.account, trigger.event), ()):
                entry = run.current.entry
                # Even for a user in the journey now: a goal earlier in the batch may end it.
                if isinstance(entry, EventEntry) and entry.event == trigger.event:
                    wanted.add((run.account, run.name, trigger.user))
        for signal in signals:
            if signal.entered:
                for run in self._by_segment.get((signal.account, signal.segment), ()):
                    wanted.add((run.account, run.name, signal.user))
        for account, name, _, users in scheduled:
            wanted.update((account, name, u) for u in users)
        # Every policy needs the entry count: it numbers the entry, which keeps send ids unique.
        needed = sorted(wanted - self._known_history.keys())
        if needed:
            for key, found in zip(needed, await self._history.entries(needed)):
                if found is not None:
                    self._known_history[key] = found

    def _on_event(self, trigger: Trigger, now_ms: int) -> None:
        for run in self._by_event.get((trigger.account, trigger.event), ()):
            pos = run.positions.get(trigger.user)
            if pos is None:
                entry = run.current.entry
                taken_ms = trigger.ingested_ms or now_ms
                if (isinstance(entry, EventEntry) and entry.event == trigger.event
                        and taken_ms - trigger.ts_ms <= MAX_ENTRY_AGE_MS and all_pass(entry.where, trigger.props, now_ms)):
                    self._enter(run, trigger.user, now_ms, trigger.props)
                continue
            journey = run.versions[pos.version]
            if journey.goal is not None and self._rule_hits(journey, journey.goal, pos, trigger, now_ms):
                self._leave(run, trigger.user, pos, "control_converted" if pos.control else "converted")
                continue
            if pos.node == GOAL_NODE:
                continue
            if any(self._rule_hits(journey, rule, pos, trigger, now_ms) for rule in journey.exits):
                self._leave(run, trigger.user, pos, "exited")
                continue
            node = journey.nodes[pos.node]
            if pos.phase == WAITING and isinstance(node, WaitForEvent) and self._rule_hits(journey, node, pos, trigger,
                                                                                           now_ms):
                self._advance(run, trigger.user, pos, node.on_event, now_ms)

    @staticmethod
    def _rule_hits(journey: Journey, rule: EventRule | WaitForEvent, pos: Position, trigger: Trigger,
                   now_ms: int) -> bool:
        """The event is the rule's (name, `where` filters, and the entry's match value)."""
        return (rule.event == trigger.event and all_pass(rule.where, trigger.props, now_ms)
                and (not rule.match or _same_key(journey, pos, trigger)))

    def _on_signal(self, signal: SegmentSignalIn, now_ms: int) -> None:
        for run in self._by_segment.get((signal.account, signal.segment), ()):
            pos = run.positions.get(signal.user)
            if signal.entered:
                if pos is None and run.current.signal_segment() == signal.segment:
                    self._enter(run, signal.user, now_ms, {})
            elif pos is not None and pos.node != GOAL_NODE:
                journey = run.versions[pos.version]
                if journey.exit_on_segment_exit and journey.signal_segment() == signal.segment:
                    self._leave(run, signal.user, pos, "exited")

    def _enter(self, run: _Run, user: str, now_ms: int, props: dict[str, Any], not_since: int | None = None) -> bool:
        if run.status != ACTIVE or run.deleted or user in run.positions:
            return False
        journey = run.current
        key = (run.account, run.name, user)
        count, last_ms = self._known_history.get(key, (0, None))
        if not _may_enter(journey.reentry, count, last_ms, now_ms):
            return False
        if not_since is not None and last_ms is not None and last_ms >= not_since:
            return False
        seq = count + 1
        self._known_history[key] = self.changes.entries[key] = (seq, now_ms)
        control = bucket(run.account, run.name, "$control", user) < journey.control_percent
        match_value = props.get(journey.match_property) if journey.match_property else None
        wanted = journey.event_properties
        kept = dict(props) if wanted is None else {k: props[k] for k in wanted if k in props}
        pos = Position(run.version, journey.start, 0, 0, now_ms, seq, match_value, None, control, kept or None)
        self.changes.count(run.account, run.name, counters.outcome(run.version, "control_entered" if control else "entered"))
        self._set(run, user, None, pos)
        self._advance(run, user, pos, journey.start, now_ms)
        return True

    def _leave(self, run: _Run, user: str, pos: Position, outcome: str) -> None:
        self.changes.count(run.account, run.name, counters.outcome(pos.version, outcome))
        self._set(run, user, pos, None)

    # --- moving along -----------------------------------------------------------------

    def _advance(self, run: _Run, user: str, pos: Position, node_id: str | None, now_ms: int) -> None:
        """Run nodes from `node_id` until the user waits, needs a lookup, or leaves."""
        journey = run.versions[pos.version]
        variant = pos.variant
        while True:
            if node_id is None or isinstance(journey.nodes[node_id], Exit):
                if node_id is not None:
                    self.changes.count(run.account, run.name, counters.at_node(pos.version, node_id, "reached"))
                self._finish(run, user, pos, now_ms, variant)
                return
            if run.status == PAUSED:
                self._rest(run, user, pos, node_id, READY, 0, variant)
                run.held.add(user)
                return
            node = journey.nodes[node_id]
            if isinstance(node, (Branch, WaitUntil)):
                # Counted as reached when the lookup answers and the node runs.
                self._rest(run, user, pos, node_id, READY, 0, variant)
                self._pending.setdefault((run.index, pos.version, node_id), []).append(user)
                return
            self.changes.count(run.account, run.name, counters.at_node(pos.version, node_id, "reached"))
            if isinstance(node, Send):
                if not pos.control:
                    self._send(run, user, pos, node_id, node, variant, now_ms)
                node_id = node.next
            elif isinstance(node, Split):
                roll = bucket(run.account, run.name, node_id, user)
                for option in node.variants:
                    roll -= option.percent
                    if roll < 0:
                        break
                variant, node_id = option.name, option.next
            elif isinstance(node, Wait):
                self._rest(run, user, pos, node_id, WAITING, now_ms + node.duration_ms, variant)
                return
            else:
                assert isinstance(node, WaitForEvent)
                self._rest(run, user, pos, node_id, WAITING, now_ms + node.timeout_ms, variant)
                return

    def _rest(self, run: _Run, user: str, pos: Position, node_id: str, phase: int, due_ms: int,
              variant: str | None) -> None:
        current = run.positions.get(user, pos)
        new = msgspec.structs.replace(current, node=node_id, phase=phase, due_ms=due_ms, variant=variant)
        self._set(run, user, current, new)

    def _finish(self, run: _Run, user: str, pos: Position, now_ms: int, variant: str | None) -> None:
        current = run.positions.get(user, pos)
        journey = run.versions[current.version]
        self.changes.count(run.account, run.name, counters.outcome(current.version, "completed"))
        if journey.goal is not None and journey.goal_within_ms is not None:
            due = current.entered_ms + journey.goal_within_ms
            if due > now_ms:
                # Still inside the conversion window: the goal may yet come.
                new = msgspec.structs.replace(current, node=GOAL_NODE, phase=WAITING, due_ms=due, variant=variant)
                self._set(run, user, current, new)
                return
        self._set(run, user, current, None)

    def _send(self, run: _Run, user: str, pos: Position, node_id: str, node: Send, variant: str | None,
              now_ms: int) -> None:
        send_id = f"{run.account}/{run.name}/{pos.version}/{user}/{pos.seq}/{node_id}"
        journey = run.versions[pos.version]
        self.changes.sends.append(SendRequest(
            send_id, run.account, user, node.channel, node.message, run.name, pos.version, node_id, now_ms, variant,
            [(f.channel, f.message) for f in node.fallback], node.quiet_hours, node.respect_caps,
            journey.throttle_per_minute, pos.event or {}, deliver_within_ms=node.deliver_within_ms))
        self.changes.count(run.account, run.name, counters.sent(pos.version, node_id, variant))

    def _fire_due(self, now_ms: int) -> None:
        fired = 0
        while self._timers and self._timers[0][0] <= now_ms and fired < MAX_TIMERS_PER_BATCH:
            due, index, user = heapq.heappop(self._timers)
            run = self._run_list[index]
            pos = run.positions.get(user)
            if run.deleted or pos is None or pos.phase != WAITING or pos.due_ms != due:
                self._stale = max(0, self._stale - 1)
                continue  # stale: the user moved on since this timer was set
            fired += 1
            if run.status == PAUSED:
                run.held.add(user)
                continue
            if pos.node == GOAL_NODE:
                self._set(run, user, pos, None)
                continue
            node = run.versions[pos.version].nodes[pos.node]
            if isinstance(node, WaitForEvent):
                self._advance(run, user, pos, node.on_timeout, now_ms)
            else:
                assert isinstance(node, (Wait, WaitUntil))
                self._advance(run, user, pos, node.next, now_ms)

    def timers_due(self, now_ms: int) -> bool:
        return bool(self._timers) and self._timers[0][0] <= now_ms

    def _release(self, run: _Run) -> None:
        """A resumed journey: its held users go on where they stopped."""
        for user in run.held:
            pos = run.positions.get(user)
            if pos is None:
                continue
            if pos.phase == WAITING:
                heapq.heappush(self._timers, (pos.due_ms, run.index, user))
            else:
                self._ready.append((run, user))
        run.held.clear()

    async def _resolve_pending(self, now_ms: int) -> None:
        """Branches and time-of-day waits ask the shard, one call per node for all users."""
        while self._pending:
            pending, self._pending = self._pending, {}
            for (index, version, node_id), queued in pending.items():
                run = self._run_list[index]
                users = [u for u in dict.fromkeys(queued) if _at(run, u, version, node_id)]
                if not users or run.deleted:
                    continue
                journey = run.versions[version]
                node = journey.nodes[node_id]
                if isinstance(node, Branch):
                    answers = await self._lookups.matching(run.account, node.condition_raw, users, now_ms, journey.tz)
                    for user, yes in zip(users, answers):
                        if not _at(run, user, version, node_id):
                            continue
                        pos = run.positions[user]
                        self.changes.count(run.account, run.name, counters.at_node(version, node_id, "reached"))
                        self._advance(run, user, pos, node.yes if yes else node.no, now_ms)
                else:
                    assert isinstance(node, WaitUntil)
                    zones = await self._lookups.time_zones(run.account, users)
                    for user, tz_name in zip(users, zones):
                        if not _at(run, user, version, node_id):
                            continue
                        pos = run.positions[user]
                        self.changes.count(run.account, run.name, counters.at_node(version, node_id, "reached"))
                        due = next_local_time(now_ms, node.at, tz_name, journey.tz)
                        self._rest(run, user, pos, node_id, WAITING, due, pos.variant)

    # --- operator actions ---------------------------------------------------------------

    def move(self, account: str, name: str, from_version: int, nodes: dict[str, str], now_ms: int) -> int:
        """Move the users on `from_version` to the current version: each to `nodes[its node]`,
        else to the node of the same id. A user waiting at a node of the same kind keeps
        its deadline; otherwise the new node runs now. Returns how many moved."""
        run = self._runs.get((account, name))
        if run is None or from_version not in run.versions or from_version == run.version:
            return 0
        target = run.current
        moved = 0
        for user, pos in list(run.positions.items()):
            if pos.version != from_version:
                continue
            if pos.node == GOAL_NODE:
                new = msgspec.structs.replace(pos, version=run.version)
            else:
                node_id = nodes.get(pos.node, pos.node)
                if node_id not in target.nodes:
                    continue
                old_node = run.versions[from_version].nodes[pos.node]
                same_kind = type(old_node) is type(target.nodes[node_id])
                keep = pos.phase == WAITING and same_kind
                new = msgspec.structs.replace(pos, version=run.version, node=node_id, phase=WAITING if keep else READY,
                                              due_ms=pos.due_ms if keep else 0)
            self.changes.count(account, name, counters.outcome(from_version, "moved_out"))
            self.changes.count(account, name, counters.outcome(run.version, "moved_in"))
            self._set(run, user, pos, new)
            if new.phase == READY:
                self._ready.append((run, user))
            moved += 1
        return moved


def _gauge(pos: Position) -> str:
    """The counter of users where `pos` is: waiting at a node, or in the goal window."""
    if pos.node == GOAL_NODE:
        return counters.outcome(pos.version, "goal_window")
    return counters.at_node(pos.version, pos.node, "waiting")


def _same_key(journey: Journey, pos: Position, trigger: Trigger) -> bool:
    """The event carries the entry event's value of the match property (both present)."""
    return pos.key is not None and trigger.props.get(journey.match_property or "") == pos.key


def _at(run: _Run, user: str, version: int, node_id: str) -> bool:
    pos = run.positions.get(user)
    return pos is not None and pos.version == version and pos.node == node_id and pos.phase == READY


def _may_enter(reentry: Reentry, count: int, last_ms: int | None, now_ms: int) -> bool:
    if count == 0 or reentry.kind == "always":
        return True
    if reentry.kind == "once":
        return False
    return last_ms is None or now_ms - last_ms >= reentry.every_ms
