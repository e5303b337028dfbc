"""A campaign scheduler's loop: start the runs that come due, queue each user's message
when it is due, and answer trigger events; make each step durable before the next.

Scheduler i serves the partitions that shard i owns: it asks that shard for its part of
each run's audience, so a run to a million users goes out shard by shard, every
scheduler at once. A run's users are queued in a fixed order - by when each is due (a
local-time run sends zone by zone), then by user key - a chunk per step, and the step's
commit records the last one queued. A scheduler that restarts mid-run takes the
audience again and goes on after that user: no one is queued twice. Someone who joins
the audience meanwhile and sorts before that point is left out of the run; in a
local-time run, so is a user whose `Tz` moved their slot before that point, and one
whose `Tz` moved it after is queued again (the routers deliver a send id once, so
they still get it once).

Stopping a campaign is the routers' business as much as the scheduler's: they drop
whatever of it is still queued (see kairos.routing.router).
"""

from __future__ import annotations

import bisect
import logging
from typing import Any, Callable, Protocol

from kairos import keys
from kairos.campaigns import planning
from kairos.campaigns.catalog import CampaignCatalog
from kairos.campaigns.definition import Campaign, LocalTime, Triggered
from kairos.campaigns.model import ACTIVE, SavedCampaign
from kairos.campaigns.store import CampaignStore, Commit, RunCursor, run_field
from kairos.journeys.clock import Clock
from kairos.journeys.engine import MAX_ENTRY_AGE_MS
from kairos.journeys.event_filters import all_pass
from kairos.journeys.model import trigger_list_decoder
from kairos.log import stream_id_order
from kairos.models import Trigger
from kairos.routing.delivery_events import HELD_OUT, SentMessage, notification_event
from kairos.step_loop import StepLoop

logger = logging.getLogger(__name__)

# Users queued per step, over all runs: a step's commit stays a few megabytes, and
# trigger events keep flowing between the chunks of a big run.
CHUNK = 20_000
# A run's first chunk is small, and each after it twice the one before (up to CHUNK): the
# first messages reach the routers within milliseconds, not after a 20,000-request commit.
FIRST_CHUNK = 500
INBOX_READ = 500


class Audience(Protocol):
    """The users of this scheduler's partitions, as the shard that holds them sees them."""

    async def segment_users(self, account: str, definition: Any, now_ms: int, tz: str) -> list[str]: ...

    async def time_zones(self, account: str, users: list[str]) -> list[str | None]: ...

    async def identifiers(self, account: str, users: list[str]) -> list[str | None]:
        """One identifier of each user (None: gone), for the events that go in under it."""
        ...


class SegmentSource(Protocol):
    async def get(self, account: str, name: str) -> Any: ...


class _Run:
    """A run under way: its users in queue order, and how many are queued."""

    __slots__ = ("account", "campaign_id", "run_ms", "queue", "pos", "chunk")

    def __init__(self, account: str, campaign_id: int, run_ms: int, queue: list[tuple[int, str]], pos: int) -> None:
        self.account, self.campaign_id, self.run_ms = account, campaign_id, run_ms
        self.queue, self.pos = queue, pos
        self.chunk = min(FIRST_CHUNK, CHUNK)


class CampaignScheduler(StepLoop):
    name = "campaign scheduler"

    def __init__(self, store: CampaignStore, catalog: CampaignCatalog, segments: SegmentSource, audience: Audience,
                 clock: Clock, poll_ms: int = 200,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        super().__init__(on_failure)
        self.store = store
        self.catalog = catalog
        self.segments = segments
        self.audience = audience
        self.clock = clock
        self.poll_ms = poll_ms
        self._campaigns: dict[tuple[str, int], tuple[SavedCampaign, Campaign]] = {}  # the active ones
        self._by_event: dict[tuple[str, str], list[tuple[int, Campaign]]] = {}
        self._cursors: dict[str, RunCursor] = {}
        self._runs: dict[str, _Run] = {}
        # Each campaign's latest run as last computed: (at, until, run), valid while at <= now < until.
        self._latest: dict[tuple[str, int], tuple[int, int | None, int | None]] = {}
        self._inbox_at = {keys.campaign_inbox(p): "0-0" for p in store.partitions}
        self._inbox_partition = {keys.campaign_inbox(p): p for p in store.partitions}

    # --- start ----------------------------------------------------------------------------

    async def _load(self) -> None:
        self._cursors, inbox = await self.store.load_cursors()
        for stream, partition in self._inbox_partition.items():
            self._inbox_at[stream] = inbox.get(partition, "0-0")
        for account, saved in (await self.catalog.everything()).items():
            self._take(account, saved)

    async def _trim(self) -> None:
        for stream, last in self._inbox_at.items():
            if last != "0-0":
                await self.store.trim_through(stream, last)

    # --- the catalog ----------------------------------------------------------------------

    async def refresh(self, account: str) -> None:
        """Take up the account's campaigns as saved now (new ones, stops)."""
        await self.load()
        async with self._lock:
            self._take(account, await self.catalog.all(account))

    def _take(self, account: str, saved: list[SavedCampaign]) -> None:
        # A campaign never changes once saved: parse only the new ones (a resync every
        # CATALOG_RESYNC_S would otherwise parse every template of every campaign again).
        held = {key: value for key, value in self._campaigns.items() if key[0] == account}
        for key in held:
            del self._campaigns[key]
        for item in saved:
            if item.status == ACTIVE:
                known = held.get((account, item.id))
                parsed = known[1] if known is not None and known[0].created_ms == item.created_ms else item.parsed()
                self._campaigns[(account, item.id)] = (item, parsed)
        for key in [k for k in self._latest if k[0] == account and k not in self._campaigns]:
            del self._latest[key]
        for field in [f for f, run in self._runs.items()
                      if run.account == account and (account, run.campaign_id) not in self._campaigns]:
            del self._runs[field]  # stopped part-way: the rest of its users are not queued
        for key in [k for k in self._by_event if k[0] == account]:
            del self._by_event[key]
        for (acct, campaign_id), (_, campaign) in self._campaigns.items():
            if acct == account and campaign.triggered:
                self._by_event.setdefault((account, campaign.schedule.event), []).append((campaign_id, campaign))

    # --- steps ----------------------------------------------------------------------------

    async def step(self) -> int:
        """One round: trigger events read since the last, then the runs' users now due;
        returns how many users it queued (or held out)."""
        now = await self.clock.now_ms()
        block = None if self._queued_due(now) else self.poll_ms
        found = await self.store.read_inbox(dict(self._inbox_at), INBOX_READ, block)
        async with self._lock:
            now = await self.clock.now_ms()
            commit = Commit()
            taken = await self._triggered(found, commit, now)
            taken += await self._run_step(commit, now)
            try:
                await self.store.commit(commit)
            except Exception as exc:
                self._fail(exc)
                raise
            self._cursors.update(commit.cursors)
            for partition, last in commit.inbox.items():
                self._inbox_at[keys.campaign_inbox(partition)] = last
            self.steps += 1
            return taken

    def _queued_due(self, now: int) -> bool:
        """Whether some run has users due now (so the step must not wait for events), or
        some campaign's next run is due."""
        if any(run.pos < len(run.queue) and run.queue[run.pos][0] <= now for run in self._runs.values()):
            return True
        return any(self._due_run(account, campaign_id, now) is not None
                   for account, campaign_id in self._campaigns if run_field(account, campaign_id) not in self._runs)

    def _latest_run(self, account: str, campaign_id: int, now: int) -> int | None:
        known = self._latest.get((account, campaign_id))
        if known is not None and known[0] <= now and (known[1] is None or now < known[1]):
            return known[2]
        saved, campaign = self._campaigns[(account, campaign_id)]
        latest, until = planning.latest_run_holding(campaign, saved.created_ms, now)
        self._latest[(account, campaign_id)] = (now, until, latest)
        return latest

    def _due_run(self, account: str, campaign_id: int, now: int) -> int | None:
        key = self._latest_run(account, campaign_id, now)
        if key is None:
            return None
        cursor = self._cursors.get(run_field(account, campaign_id))
        if cursor is not None and (cursor.run_ms > key or (cursor.run_ms == key and cursor.done)):
            return None
        return key

    async def _run_step(self, commit: Commit, now: int) -> int:
        budget = CHUNK
        for (account, campaign_id), (saved, campaign) in list(self._campaigns.items()):
            if budget <= 0:
                break
            if campaign.triggered:
                continue
            field = run_field(account, campaign_id)
            run = self._runs.get(field)
            if run is None:
                key = self._due_run(account, campaign_id, now)
                if key is None:
                    continue
                run = self._runs[field] = await self._start_run(account, saved, campaign, key, commit, now)
            end, most = run.pos, min(budget, run.chunk)
            while end < len(run.queue) and end - run.pos < most and run.queue[end][0] <= now:
                end += 1
            if end > run.pos:
                run.chunk = min(CHUNK, run.chunk * 2)
            await self._queue(commit, account, campaign_id, campaign,
                              [(user, planning.send_id(campaign_id, run.run_ms, user), due_ms, None)
                               for due_ms, user in run.queue[run.pos:end]])
            queued_now = end - run.pos
            budget -= queued_now
            run.pos = end
            if run.pos == len(run.queue):
                commit.cursors[field] = RunCursor(run.run_ms, done=True)
                commit.count(account, campaign_id, f"done|{run.run_ms}")
                del self._runs[field]
            elif queued_now:  # else nothing moved: no write while a run waits for later zones
                due_ms, user = run.queue[end - 1]
                commit.cursors[field] = RunCursor(run.run_ms, due_ms, user)
        return CHUNK - budget

    async def _start_run(self, account: str, saved: SavedCampaign, campaign: Campaign, run_ms: int,
                         commit: Commit, now: int) -> _Run:
        """Takes the run's audience (the part in this scheduler's partitions) in queue
        order, and goes on after the last user queued if the run was under way."""
        field = run_field(account, saved.id)
        members = await self._members(account, saved, campaign, now)
        schedule = campaign.schedule
        missed = 0
        if isinstance(schedule, LocalTime):
            queue: list[tuple[int, str]] = []
            zones = await self.audience.time_zones(account, members) if members else []
            # A slot depends on the zone only: a few hundred zones for a whole audience.
            slots: dict[str | None, int | None] = {}
            for user, tz in zip(members, zones):
                if tz not in slots:
                    slots[tz] = planning.local_slot(schedule, run_ms, tz, campaign.tz)
                slot = slots[tz]
                if slot is None:
                    missed += 1
                else:
                    queue.append((slot, user))
        else:
            queue = [(run_ms, user) for user in members]
        queue.sort()
        cursor = self._cursors.get(field)
        if cursor is not None and cursor.run_ms == run_ms:
            pos = bisect.bisect_right(queue, (cursor.due_ms, cursor.user))
        else:
            pos = 0
            # Counted when the run starts, once: a run taken up again after a restart is not new.
            commit.count(account, saved.id, "audience", len(members))
            commit.count(account, saved.id, "runs")
            if missed:
                commit.count(account, saved.id, "missed_slot", missed)
            commit.cursors[field] = RunCursor(run_ms)
        return _Run(account, saved.id, run_ms, queue, pos)

    async def _members(self, account: str, saved: SavedCampaign, campaign: Campaign, now: int) -> list[str]:
        if campaign.audience_segment is None:
            return await self.audience.segment_users(account, campaign.audience_where, now, campaign.tz)
        segment = await self.segments.get(account, campaign.audience_segment)
        if segment is None:
            logger.error("campaign %s of %s: its segment %r does not exist any more; nobody to send to",
                         saved.id, account, campaign.audience_segment)
            return []
        return await self.audience.segment_users(account, segment.definition, now, campaign.tz)

    async def _queue(self, commit: Commit, account: str, campaign_id: int, campaign: Campaign,
                     items: list[tuple[str, str, int, dict[str, Any] | None]]) -> None:
        """Each (user, request id, due, trigger event): the message goes to the outbox, or
        (in the control group) a `Notification Held Out` event to the user's stream, at
        the time they would have been sent it."""
        held_out: list[tuple[str, str, int]] = []
        for user, request_id, due_ms, event in items:
            variant = planning.assign(campaign_id, campaign, user)
            if variant == planning.CONTROL:
                held_out.append((user, request_id, due_ms))
                continue
            partition = self.store.partition_of(account, user)
            commit.sends.append((partition, planning.send_request(account, campaign_id, campaign, variant, user,
                                                                  request_id, due_ms, event)))
            commit.count(account, campaign_id, f"queued|{variant}")
        if not held_out:
            return
        commit.count(account, campaign_id, "control", len(held_out))
        # Events go in under one of the user's identifiers (ingest resolves it back to them).
        identifiers = await self.audience.identifiers(account, [user for user, _, _ in held_out])
        channel = campaign.variants[0].send.channel
        for (user, request_id, due_ms), identifier in zip(held_out, identifiers):
            if identifier is None:
                continue  # deleted meanwhile: no stream to add to
            held = SentMessage(account, identifier, request_id, channel, planning.SOURCE_KIND, str(campaign_id),
                               planning.CONTROL, planning.CONTROL)
            commit.events.setdefault((self.store.partition_of(account, user), account), []).append(
                notification_event(held, HELD_OUT, due_ms))

    async def _triggered(self, found: list[tuple[str, list[Any]]], commit: Commit, now: int) -> int:
        """Trigger events that match a triggered campaign: each gets its message, due
        `delay` from now (the router holds it until then)."""
        matches: list[tuple[int, Campaign, str, Trigger, str]] = []  # campaign, its id, send id, trigger, account
        for stream, entries in found:
            commit.inbox[self._inbox_partition[stream]] = entries[-1][0].decode()
            for entry_id, fields in entries:
                inbox_id = entry_id.decode()
                ingested_ms = stream_id_order(inbox_id)[0]
                for i, trigger in enumerate(trigger_list_decoder.decode(fields[b"t"])):
                    for campaign_id, campaign in self._by_event.get((trigger.account, trigger.event), ()):
                        saved, _ = self._campaigns[(trigger.account, campaign_id)]
                        schedule = campaign.schedule
                        assert isinstance(schedule, Triggered)
                        # Not for what users did before the campaign existed, nor for a
                        # backfill of old history.
                        if max(ingested_ms, trigger.ts_ms) < saved.created_ms \
                                or ingested_ms - trigger.ts_ms > MAX_ENTRY_AGE_MS:
                            continue
                        if all_pass(schedule.where, trigger.props, now):
                            matches.append((campaign_id, campaign, planning.triggered_send_id(campaign_id, inbox_id, i),
                                            trigger, trigger.account))
        once: dict[tuple[str, int], list[int]] = {}
        for n, (campaign_id, campaign, _, trigger, account) in enumerate(matches):
            assert campaign.triggered
            if campaign.schedule.per_user == "once":
                once.setdefault((account, campaign_id), []).append(n)
        skip: set[int] = set()
        for (account, campaign_id), positions in once.items():
            users = [matches[n][3].user for n in positions]
            seen: set[str] = set()
            for n, user, reached in zip(positions, users, await self.store.reached(account, campaign_id, users)):
                if reached or user in seen:
                    skip.add(n)
                else:
                    seen.add(user)
                    partition = self.store.partition_of(account, user)
                    commit.reached.setdefault((account, campaign_id, partition), []).append(user)
        by_campaign: dict[tuple[str, int], list[tuple[str, str, int, dict[str, Any] | None]]] = {}
        for n, (campaign_id, campaign, request_id, trigger, account) in enumerate(matches):
            if n in skip:
                continue
            assert campaign.triggered
            # From now (on the scheduler's clock, as a journey's waits): moments after the
            # shard took the event, unless the scheduler is catching up after a restart.
            due_ms = now + campaign.schedule.delay_ms
            by_campaign.setdefault((account, campaign_id), []).append((trigger.user, request_id, due_ms, trigger.props))
        for (account, campaign_id), items in by_campaign.items():
            _, campaign = self._campaigns[(account, campaign_id)]
            await self._queue(commit, account, campaign_id, campaign, items)
            commit.count(account, campaign_id, "triggered", len(items))
        return sum(len(items) for items in by_campaign.values())
