"""The channel router: takes the send requests of its partitions (journeys' outboxes,
and its own delayed set when their time comes), decides each one for its user (see
kairos.routing.plan), hands the survivors to providers, and records what happened.

A round:
1. read what is due: delayed requests, then new outbox entries;
2. drop the ids the user's history already has (upstream retries, a re-read after a
   crash): a message reaches a user once;
3. drop those of stopped campaigns; plan each other one on its first usable channel,
   apply its journey's or campaign's throttle;
4. write the decisions (history marks, delays, failures, the outbox cursor) in one
   transaction, then call the providers: the batch goes on by itself while the next
   rounds start, so a slow provider (an account's webhook taking its full timeout)
   holds up its own batch, not every account's messages; a request for a user whose
   batch is still out waits in the delayed set until it is done;
5. write the outcomes: delivered; rejected, so the next channel is planned at once;
   transient, so it is retried with backoff, and after `fallback_after` (or the last
   attempt) the next channel is tried.
A crash between 4 and 5 leaves the request marked as handed to its provider: it is not
sent again (at most once); when the router comes back it counts it `unknown` and lists
it with the dead letters. A round that fails before its commit (a shard or Redis error)
is read again from the last committed outbox position.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter, defaultdict
from typing import Any, Awaitable, Protocol

import msgspec

from kairos.campaigns.planning import SOURCE_KIND as CAMPAIGN_KIND
from kairos.channels.base import DELIVERED, REJECTED, BatchProvider, Delivery, Outcome, Provider, transient
from kairos.coalesce import linger
from kairos.journeys.clock import Clock
from kairos.journeys.model import SendRequest
from kairos.journeys.outbox import OutboxReader
from kairos.models import ProfileRecord
from kairos.routing import delivery_events as events
from kairos.routing import plan as planning
from kairos.routing.caps import horizon_ms
from kairos.routing.delivery_store import (
    AWAITING, CLAIMED, COUNTED, DELIVERED as STATE_DELIVERED, GIVEN_UP, QUEUED, Commit, DeliveryStore, HistoryEntry,
    InFlight, Pending, UserRef, decode_pending, encode_in_flight, encode_pending, history_field, source_counters,
    trimmed,
)
from kairos.routing.settings import DeliverySettings
from kairos.routing.tracking import TrackedLink, Tracker

logger = logging.getLogger(__name__)

MAX_BATCH = 2000
# Rounds go on while earlier batches wait for their providers, up to this many batches
# (a bound on memory), and this many of one account's (so a slow provider cannot take up
# all of them: that account's further messages wait in the delayed set instead).
MAX_BATCHES_IN_FLIGHT = 256
MAX_BATCHES_PER_ACCOUNT = 4
# Provider calls under way at once for one account: an account whose provider is slow
# takes up its own share, not every account's.
MAX_CALLS_PER_ACCOUNT = 256
# A request whose user's batch is still out is looked at again this much later.
HELD_RECHECK_MS = 200
# After a light round (fewer than LINGER_BELOW requests), the next waits this long from
# the round's start. A round costs a profile lookup on the shard (a Ray call) and several
# Redis round trips, ~2.5 ms of CPU whatever it carries, and each request ~0.05 ms: at a
# trickle of sends, each would make its own round and cost more CPU than the sends
# themselves. At most this much is added to such a send's delivery; busier rounds go on
# at once.
LINGER_MS = 50
LINGER_BELOW = 50
# A push that went out and then fell back (not reported arriving) stays in the user's
# history under its send id plus this, so it keeps counting against the caps.
SENT_BEFORE_FALLBACK = "|sent-before-fallback:"
# Histories are trimmed when their user is written to; users never written to again are
# swept, a page per partition this often, so the hash does not grow with every user ever sent to.
SWEEP_EVERY_MS = 60_000
SWEEP_PAGE = 1000


class Profiles(Protocol):
    async def profiles(self, account: str, users: list[str]) -> list[tuple[dict[str, Any], str] | None]:
        """Each user's profile properties, and an identifier of theirs that ingest
        resolves back to them (delivery events go in under it); None: no such user."""
        ...


class ProviderSource(Protocol):
    """The account's settings and its providers, built from them (cached by the source)."""

    async def settings(self, account: str) -> DeliverySettings: ...

    async def provider(self, account: str, channel: str) -> Provider | None: ...


class _Round(msgspec.Struct):
    """What a round read, which its batches keep using until their last outcome is written."""

    histories: dict[UserRef, list[HistoryEntry]]
    profiles: dict[UserRef, tuple[dict[str, Any], str] | None]
    settings: dict[str, DeliverySettings]


def _source_counters(request: SendRequest, outcome: str) -> tuple[str, ...]:
    return source_counters(request.source_kind, request.journey, request.variant, outcome)


def _same_message(entry: HistoryEntry, send_id: str) -> bool:
    """The entry is the request's own (or its push that went out before a fallback)."""
    return entry.send_id == send_id or entry.send_id.startswith(send_id + SENT_BEFORE_FALLBACK)


class _Work(msgspec.Struct):
    pending: Pending
    partition: int
    member: bytes | None  # its delayed-set member, when it came from there
    plan: planning.Plan | None = None
    identifier: str | None = None  # the user's, for delivery events (None: no such user)

    @property
    def ref(self) -> UserRef:
        return self.pending.request.account, self.pending.request.user


async def _guarded(call: Awaitable[list[Outcome]], work: _Work, count: int) -> list[Outcome]:
    try:
        return await call
    except Exception as exc:  # a provider bug must not stop every other delivery
        logger.exception("provider failed on %s", work.pending.request.id)
        return [transient(f"provider error: {exc!r}")] * count


async def _one(provider: Provider, delivery: Delivery) -> list[Outcome]:
    return [await provider.send(delivery)]


class ChannelRouter:
    def __init__(self, store: DeliveryStore, outbox: OutboxReader, profiles: Profiles, providers: ProviderSource,
                 clock: Clock, tracker: Tracker | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.profiles = profiles
        self.providers = providers
        self.clock = clock
        self.tracker = tracker  # None: messages go out without open and click tracking
        self._calls: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(MAX_CALLS_PER_ACCOUNT))  # account -> its share of calls
        self._batches: set[asyncio.Future[None]] = set()  # batches with their providers
        self._busy: set[UserRef] = set()  # the users in them
        self._claims_out: set[str] = set()  # their claims' batch ids (not orphans)
        self._failed_ids: set[str] = set()  # batches that failed and may have left claims behind
        self._account_batches: Counter[str] = Counter()  # account -> its batches out
        self.handled = 0
        self._sweep_cursors = {p: 0 for p in store.partitions}
        self._next_sweep_ms = 0

    @classmethod
    async def open(cls, store: DeliveryStore, profiles: Profiles, providers: ProviderSource, clock: Clock,
                   tracker: Tracker | None = None) -> "ChannelRouter":
        outbox = OutboxReader(store.redis, store.partitions, await store.cursors())
        router = cls(store, outbox, profiles, providers, clock, tracker)
        await router._settle_orphans()
        return router

    async def _settle_orphans(self, only: set[str] | None = None) -> None:
        """Requests handed to a provider without the outcome written (by a previous run, or
        `only` these failed batches of this one): the message may or may not have gone
        out, and is not sent again."""
        now = await self.clock.now_ms()
        commit = Commit()
        for partition, batches in (await self.store.in_flight()).items():
            orphans = {batch_id: claims for batch_id, claims in batches.items()
                       if (only is None or batch_id in only) and batch_id not in self._claims_out}
            for batch_id in orphans:
                commit.settled.setdefault(partition, []).append(batch_id)
            for claim in (c for claims in orphans.values() for c in claims):
                commit.count(claim.account, f"{claim.channel}|unknown",
                             *source_counters(claim.source_kind, claim.source, claim.variant, "unknown"))
                commit.dead.setdefault(claim.account, []).append(
                    {"id": claim.send_id, "user": claim.user, "channel": claim.channel, "at_ms": now,
                     "reason": "unknown: handed to the provider, but the outcome was not written (the router "
                               "stopped, or Redis failed); not sent again",
                     "source_kind": claim.source_kind, "source": claim.source, "node": claim.node})
        await self.store.commit(commit)

    async def step(self, block_ms: int | None = None) -> int:
        """One round: decides what is due and starts handing it to providers (without
        waiting for them: see `_send`); how many requests it took up."""
        if len(self._batches) >= MAX_BATCHES_IN_FLIGHT:
            await asyncio.wait(self._batches, return_when=asyncio.FIRST_COMPLETED)
        now = await self.clock.now_ms()
        works: list[_Work] = []
        waiting: dict[int, list[bytes]] = {}
        for partition, member in await self.store.due(now, MAX_BATCH):
            work = _Work(decode_pending(member), partition, member)
            if self._must_wait(work.ref):
                waiting.setdefault(partition, []).append(member)
            else:
                works.append(work)
        if waiting:
            # Their user's batch (or too many of their account's) is still with its
            # provider: they wait, behind what else is due (a slow batch's users must not
            # hold the delayed set's head).
            await self.store.postpone(waiting, now + HELD_RECHECK_MS)
        read_from = dict(self.outbox.after)
        entries = await self.outbox.read_entries(MAX_BATCH, None if works else block_ms)
        cursors: dict[int, str] = {}
        for partition, entry_id, request in entries:
            works.append(_Work(Pending(request), partition, None))
            cursors[partition] = entry_id
        if works or cursors:
            try:
                self.handled += await self._handle(works, cursors, now)
            except BaseException:
                # Read again what the round did not commit; what it did is in the users'
                # histories, and is dropped as a duplicate when read again.
                self.outbox.after = read_from
                raise
        return len(works)

    async def drain(self) -> None:
        """Waits for the batches still with their providers."""
        while self._batches:
            await asyncio.wait(list(self._batches))

    async def _handle(self, works: list[_Work], cursors: dict[int, str], now: int) -> int:
        """Decides `works` and starts their batch; how many it took up (not those held)."""
        commit = Commit()
        commit.cursors.update(cursors)
        # A new request for a user whose last batch is still with its provider waits for it
        # (so the two never write the user's history at once), as does one of an account
        # with too many batches out (a slow provider must not take up every batch), in the
        # delayed set, which keeps it across a crash.
        taken: list[_Work] = []
        for work in works:
            # Those from the delayed set were checked in `step`; since then batches can only
            # have ended, not started.
            if work.member is None and self._must_wait(work.ref):
                member = encode_pending(msgspec.structs.replace(work.pending, held=True))
                commit.delayed.setdefault(work.partition, []).append((member, now + HELD_RECHECK_MS))
            else:
                taken.append(work)
        works = taken
        histories = await self.store.histories(w.ref for w in works)
        fresh = self._deduped(works, histories, commit)
        accounts = {w.pending.request.account for w in fresh}
        settings = {a: await self.providers.settings(a) for a in accounts}
        fresh = await self._undelivered(fresh, histories, settings, commit, now)
        profiles = await self._profiles(fresh)
        round_ = _Round(histories, profiles, settings)
        for sending, batch_id in await self._decide(fresh, round_, commit, now):
            users = {w.ref for w in sending}
            account = sending[0].pending.request.account
            self._busy.update(users)
            self._account_batches[account] += 1
            task = asyncio.ensure_future(self._send(sending, batch_id, round_))
            self._batches.add(task)
            task.add_done_callback(lambda done, users=users, account=account: self._finished(done, users, account))
        return len(works)

    def _must_wait(self, ref: UserRef) -> bool:
        return ref in self._busy or self._account_batches[ref[0]] >= MAX_BATCHES_PER_ACCOUNT

    def _finished(self, task: "asyncio.Future[None]", users: set[UserRef], account: str) -> None:
        self._batches.discard(task)
        self._busy.difference_update(users)
        self._account_batches[account] -= 1
        if self._account_batches[account] <= 0:
            del self._account_batches[account]
        if not task.cancelled():
            task.exception()  # retrieved: `_send` has logged it and noted the batch as failed

    async def _decide(self, fresh: list[_Work], round_: _Round, commit: Commit,
                      now: int) -> list[tuple[list[_Work], str]]:
        """Plans `fresh`, writes the decisions with `commit`; returns what goes to
        providers as batches, one per account (so a slow provider holds up one account's
        messages only), each with the id its claims are written under."""
        histories = round_.histories
        stopped = await self.store.stopped_campaigns(
            {(w.pending.request.account, w.pending.request.journey) for w in fresh
             if w.pending.request.source_kind == CAMPAIGN_KIND})
        # Sends planned earlier in this round count against the caps of later ones.
        planned: dict[UserRef, list[HistoryEntry]] = {}
        for work in fresh:
            request, ref = work.pending.request, work.ref
            if request.source_kind == CAMPAIGN_KIND and (request.account, request.journey) in stopped:
                work.plan = planning.Plan(planning.DROP, work.pending.channel_index, request.channel, reason="stopped")
                continue
            # Not the message's own earlier channel: a fallback is the same message.
            history = [e for e in histories[ref] if e.state in COUNTED and not _same_message(e, request.id)]
            history += planned.get(ref, [])
            profile = round_.profiles.get(ref)
            work.plan = planning.plan(request, work.pending.channel_index, profile[0] if profile else None,
                                      history, round_.settings[request.account], now)
            work.identifier = profile[1] if profile else None
            if work.plan.action == planning.SEND:
                planned.setdefault(ref, []).append(
                    HistoryEntry(now, work.plan.channel, request.source_kind, request.journey, request.id, CLAIMED))
        await self._throttle(fresh, now)
        sending = [w for w in fresh if w.plan is not None and w.plan.action == planning.SEND]
        for work in fresh:
            self._record_decision(work, histories, round_.settings[work.pending.request.account], commit, now)
        for work in sending:
            if self._awaits_arrival(work):
                # Before the hand-over: the app may report arrival before the outcome is written.
                commit.awaiting.setdefault(work.partition, []).append(
                    (work.pending.request.id, work.pending.request.deliver_within_ms))
        by_account: dict[str, list[_Work]] = {}
        for work in sending:
            by_account.setdefault(work.pending.request.account, []).append(work)
        batches = [(batch, self._claim(batch, commit)) for batch in by_account.values()]
        ids = {batch_id for _, batch_id in batches}
        self._claims_out |= ids  # live, not orphans, from the moment their claims can be read
        try:
            await self.store.commit(commit)
        except BaseException:
            # Not written, most likely; but a transaction whose answer was lost may have been.
            self._claims_out -= ids
            self._failed_ids |= ids
            raise
        return batches

    async def _send(self, sending: list[_Work], batch_id: str, round_: _Round) -> None:
        """Hands one account's batch to its providers and writes the outcomes; what was
        rejected goes on to its next channel, as a batch of its own. Runs beside the
        following rounds and the other accounts' batches (a slow provider holds up only its
        own account's messages), with the batch's users held out of them until it is done."""
        batches = [(sending, batch_id)]
        try:
            while batches:
                sending, batch_id = batches.pop()
                commit = Commit()
                for partition in {w.partition for w in sending}:
                    commit.settled.setdefault(partition, []).append(batch_id)
                outcomes = await self._deliver(sending, round_.settings)
                now = await self.clock.now_ms()  # the calls took their time: backoff and checks count from here
                again = self._record_outcomes(sending, outcomes, round_.histories, round_.settings, commit, now)
                if again:
                    batches += await self._decide(again, round_, commit, now)
                else:
                    await self.store.commit(commit)
                self._claims_out.discard(batch_id)
        except BaseException as exc:
            if isinstance(exc, Exception):
                logger.exception("delivering a batch or writing its outcomes failed; settled as unknown")
            failed = {batch_id, *(b for _, b in batches)}
            self._claims_out -= failed
            self._failed_ids |= failed  # their claims are left in Redis: the run loop settles them
            raise

    @staticmethod
    def _claim(sending: list[_Work], commit: Commit) -> str:
        """Notes the batch as handed over, until its outcomes are written with `settled`."""
        batch_id = uuid.uuid4().hex
        claims: dict[int, list[InFlight]] = {}
        for work in sending:
            request, decision = work.pending.request, work.plan
            assert decision is not None
            claims.setdefault(work.partition, []).append(InFlight(
                request.id, request.account, request.user, decision.channel, request.source_kind, request.journey,
                request.node, request.variant))
        for partition, batch in claims.items():
            commit.claimed.setdefault(partition, {})[batch_id] = encode_in_flight(batch)
        return batch_id

    def _deduped(self, works: list[_Work], histories: dict[UserRef, list[HistoryEntry]], commit: Commit) -> list[_Work]:
        fresh: list[_Work] = []
        seen: set[str] = set()
        for work in works:
            request = work.pending.request
            state = next((e.state for e in histories[work.ref] if e.send_id == request.id), None)
            if work.member is not None:
                commit.undelayed.setdefault(work.partition, []).append(work.member)
            if work.member is None or work.pending.held:
                keep = state is None
            else:
                keep = state == (AWAITING if work.pending.awaiting_receipt else QUEUED)
            if keep and request.id not in seen:
                seen.add(request.id)
                fresh.append(work)
            elif work.member is None or work.pending.held:
                commit.count(request.account, "duplicate")
        return fresh

    async def _undelivered(self, works: list[_Work], histories: dict[UserRef, list[HistoryEntry]],
                           settings: dict[str, DeliverySettings], commit: Commit, now: int) -> list[_Work]:
        """Pushes due for their arrival receipt: the ones that arrived are done; the others
        go on to their next channel (the push may still arrive late: CleverTap's and
        Braze's fallbacks also accept that a user can then get both)."""
        awaiting = [w for w in works if w.pending.awaiting_receipt]
        if not awaiting:
            return works
        arrived = await self.store.receipts((w.partition, w.pending.request.id) for w in awaiting)
        following: list[_Work] = []
        for work in works:
            pending, request = work.pending, work.pending.request
            if not pending.awaiting_receipt:
                following.append(work)
                continue
            commit.receipts_read.setdefault(work.partition, []).append(request.id)
            channel = planning.channels_of(request)[pending.channel_index][0]
            sent_at = next((e.at_ms for e in histories[work.ref] if e.send_id == request.id), now)
            if request.id in arrived:
                self._mark(request, channel, STATE_DELIVERED, histories, settings[request.account], commit, now, sent_at)
                commit.count(request.account, f"{channel}|arrived", *_source_counters(request, "arrived"))
            else:
                commit.count(request.account, f"{channel}|not_arrived", *_source_counters(request, "not_arrived"))
                # The push did go out: it keeps counting against the caps, whatever becomes
                # of the fallback, which takes over the send id.
                pushed = msgspec.structs.replace(request, id=request.id + SENT_BEFORE_FALLBACK + channel)
                self._mark(pushed, channel, STATE_DELIVERED, histories, settings[request.account], commit, now, sent_at)
                work.pending = Pending(request, pending.channel_index + 1)
                following.append(work)
        return following

    async def _profiles(self, works: list[_Work]) -> dict[UserRef, tuple[dict[str, Any], str] | None]:
        by_account: dict[str, dict[str, None]] = {}  # account -> its users, once each, in order
        for work in works:
            by_account.setdefault(work.pending.request.account, {})[work.pending.request.user] = None
        answers = await asyncio.gather(*(self.profiles.profiles(a, list(u)) for a, u in by_account.items()))
        return {(account, user): profile for (account, users), profiles in zip(by_account.items(), answers)
                for user, profile in zip(users, profiles)}

    async def _throttle(self, works: list[_Work], now: int) -> None:
        """Sends beyond a journey's messages-per-minute wait for a later minute."""
        groups: dict[tuple[str, str, int], list[_Work]] = {}
        for work in works:
            request = work.pending.request
            if work.plan is not None and work.plan.action == planning.SEND and request.throttle_per_minute:
                source = f"{request.source_kind}:{request.journey}"
                groups.setdefault((request.account, source, request.throttle_per_minute), []).append(work)
        minute = now // 60_000
        for (account, source, limit), group in groups.items():
            before = await self.store.take_throttle(account, source, minute, len(group))
            room = max(0, limit - before)
            for i, work in enumerate(group[room:]):
                # Spread the overflow over the following minutes, `limit` per minute.
                later = minute + 1 + (max(0, before - limit) + i) // limit
                assert work.plan is not None
                work.plan = msgspec.structs.replace(work.plan, action=planning.DELAY, until_ms=later * 60_000,
                                                    reason="throttled")

    def _record_decision(self, work: _Work, histories: dict[UserRef, list[HistoryEntry]], settings: DeliverySettings,
                         commit: Commit, now: int) -> None:
        request, decision = work.pending.request, work.plan
        assert decision is not None
        channel = decision.channel or request.channel
        if decision.action == planning.SEND:
            self._mark(request, channel, CLAIMED, histories, settings, commit, now)
        elif decision.action == planning.DELAY:
            self._mark(request, channel, QUEUED, histories, settings, commit, now)
            pending = msgspec.structs.replace(work.pending, channel_index=decision.channel_index, held=False)
            commit.delayed.setdefault(work.partition, []).append((encode_pending(pending), decision.until_ms))
            commit.count(request.account, f"{channel}|delayed_{decision.reason}")
        else:
            self._give_up(work, channel, decision.action, decision.reason, histories, settings, commit, now)

    def _give_up(self, work: _Work, channel: str, action: str, reason: str,
                 histories: dict[UserRef, list[HistoryEntry]], settings: DeliverySettings, commit: Commit, now: int) -> None:
        request = work.pending.request
        self._mark(request, channel, GIVEN_UP, histories, settings, commit, now)
        outcome = "dropped_" + reason if action == planning.DROP else "failed"
        commit.count(request.account, f"{channel}|{outcome}", *_source_counters(request, outcome))
        if action == planning.FAIL:
            commit.dead.setdefault(request.account, []).append(
                {"id": request.id, "user": request.user, "channel": channel, "reason": reason, "at_ms": now,
                 "source_kind": request.source_kind, "source": request.journey, "node": request.node})
            self._event(commit, work, events.FAILED, channel, now, {"Reason": reason[:500]})

    def _mark(self, request: SendRequest, channel: str, state: str, histories: dict[UserRef, list[HistoryEntry]],
              settings: DeliverySettings, commit: Commit, now: int, at_ms: int | None = None) -> None:
        """Sets the request's entry in its user's history (`at_ms`: when it was sent, if not now)."""
        ref = (request.account, request.user)
        entries = [e for e in histories[ref] if e.send_id != request.id]
        entries.append(HistoryEntry(now if at_ms is None else at_ms, channel, request.source_kind, request.journey,
                                    request.id, state))
        histories[ref] = entries = trimmed(entries, horizon_ms(settings.caps), now)
        commit.histories[(self.store.partition_of(*ref), history_field(*ref))] = entries

    @staticmethod
    def _sent(work: _Work, channel: str) -> events.SentMessage | None:
        request = work.pending.request
        if work.identifier is None:
            return None  # the user is gone: there is no stream to add to
        return events.SentMessage(request.account, work.identifier, request.id, channel, request.source_kind,
                           request.journey, request.node, request.variant)

    def _event(self, commit: Commit, work: _Work, name: str, channel: str, now: int,
               extra: dict[str, Any] | None = None) -> None:
        sent = self._sent(work, channel)
        if sent is not None:
            commit.events.setdefault(work.partition, []).append(
                (sent.account, events.notification_event(sent, name, now, extra)))

    def _tracked(self, work: _Work, settings: DeliverySettings) -> dict[str, Any]:
        """The plan's message, with open and click tracking where the channel has it."""
        decision = work.plan
        assert decision is not None
        tracking = settings.tracking
        if self.tracker is None or decision.channel not in ("email", "in_app", "push"):
            return decision.message
        sent = self._sent(work, decision.channel)
        if sent is None:
            return decision.message
        link = TrackedLink(sent, work.partition)
        if decision.channel == "email":
            return self.tracker.email(decision.message, link, tracking.opens, tracking.clicks, tracking.base_url)
        if decision.channel == "push":
            return self.tracker.push(decision.message, link, tracking.opens, tracking.clicks, tracking.base_url)
        return self.tracker.in_app(decision.message, link, tracking.opens, tracking.clicks, tracking.base_url)

    async def _deliver(self, works: list[_Work], settings: dict[str, DeliverySettings]) -> list[Outcome]:
        """Each planned message through its provider; a provider that takes batches
        (FCM's send_each) gets them in one call."""
        outcomes: list[Outcome | None] = [None] * len(works)
        groups: dict[int, tuple[Provider, list[int]]] = {}
        chosen: dict[tuple[str, str], Provider | None] = {}
        for i, work in enumerate(works):
            request, decision = work.pending.request, work.plan
            assert decision is not None
            key = (request.account, decision.channel)
            if key not in chosen:
                chosen[key] = await self.providers.provider(*key)
            provider = chosen[key]
            if provider is None:
                outcomes[i] = transient(f"no {decision.channel} provider")
            else:
                groups.setdefault(id(provider), (provider, []))[1].append(i)

        def delivery(work: _Work) -> Delivery:
            request, decision = work.pending.request, work.plan
            assert decision is not None
            return Delivery(request.id, request.account, request.user, decision.channel, decision.address,
                            self._tracked(work, settings[request.account]))

        async def one(provider: Provider, i: int) -> None:
            async with self._calls[works[i].pending.request.account]:
                [outcomes[i]] = await _guarded(_one(provider, delivery(works[i])), works[i], 1)

        async def batch(provider: BatchProvider, indexes: list[int]) -> None:
            answers = await _guarded(provider.send_many([delivery(works[i]) for i in indexes]), works[indexes[0]],
                                     len(indexes))
            for i, answer in zip(indexes, answers):
                outcomes[i] = answer

        calls = []
        for provider, indexes in groups.values():
            if isinstance(provider, BatchProvider):
                calls.append(batch(provider, indexes))
            else:
                calls.extend(one(provider, i) for i in indexes)
        await asyncio.gather(*calls)
        return [o if o is not None else transient("no outcome") for o in outcomes]

    def _record_outcomes(self, works: list[_Work], outcomes: list[Outcome], histories: dict[UserRef, list[HistoryEntry]],
                         settings: dict[str, DeliverySettings], commit: Commit, now: int) -> list[_Work]:
        """Writes outcomes into `commit`; returns the requests to plan again on their next channel."""
        again: list[_Work] = []
        for work, outcome in zip(works, outcomes):
            request, decision = work.pending.request, work.plan
            assert decision is not None
            channel, account_settings = decision.channel, settings[request.account]
            if outcome.status == DELIVERED:
                if self._awaits_arrival(work):  # its receipt key was made with its claim
                    self._mark(request, channel, AWAITING, histories, account_settings, commit, now)
                    check = Pending(request, decision.channel_index, awaiting_receipt=True)
                    commit.delayed.setdefault(work.partition, []).append(
                        (encode_pending(check), now + request.deliver_within_ms))
                else:
                    self._mark(request, channel, STATE_DELIVERED, histories, account_settings, commit, now)
                commit.count(request.account, f"{channel}|sent", *_source_counters(request, "sent"))
                sent = self._sent(work, channel)
                if outcome.reports_later and outcome.provider_id and sent is not None:
                    commit.provider_messages[(request.account, outcome.provider_id)] = TrackedLink(sent, work.partition)
                self._event(commit, work, events.SENT, channel, now)
                if outcome.final:
                    self._event(commit, work, events.DELIVERED, channel, now)
                continue
            if self._awaits_arrival(work):  # nothing went out: no arrival to wait for
                commit.receipts_read.setdefault(work.partition, []).append(request.id)
            if outcome.unreachable and channel in planning.ADDRESS_PROPERTY and work.identifier is not None:
                # The address is dead (an unregistered token): forget it, so no one tries it
                # again; unless the app has sent a new one since.
                prop = planning.ADDRESS_PROPERTY[channel]
                commit.events.setdefault(work.partition, []).append((request.account, ProfileRecord(
                    work.identifier, now, {}, None, f"kairos|{request.id}|forget-{prop}",
                    unset_if={prop: decision.address})))
            retry = account_settings.retry
            first_try = work.pending.first_try_ms or now
            attempt = work.pending.attempt + 1
            if outcome.status != REJECTED and attempt < retry.max_attempts:
                backoff = min(retry.max_backoff_ms, retry.first_backoff_ms * 2 ** (attempt - 1))
                due = now + backoff + random.randrange(backoff // 4 + 1)
                if due <= first_try + retry.fallback_after_ms:
                    pending = Pending(request, decision.channel_index, attempt, first_try)
                    self._mark(request, channel, QUEUED, histories, account_settings, commit, now)
                    commit.delayed.setdefault(work.partition, []).append((encode_pending(pending), due))
                    commit.count(request.account, f"{channel}|retried")
                    continue
            commit.count(request.account, f"{channel}|{outcome.status}")
            if decision.channel_index + 1 < len(planning.channels_of(request)):
                # This attempt reached no one: it must not count against the fallback's caps.
                self._mark(request, channel, GIVEN_UP, histories, account_settings, commit, now)
                again.append(_Work(Pending(request, decision.channel_index + 1), work.partition, None,
                                   identifier=work.identifier))
            else:
                self._give_up(work, channel, planning.FAIL, f"{outcome.status}: {outcome.detail}", histories,
                              account_settings, commit, now)
        return again

    def _awaits_arrival(self, work: _Work) -> bool:
        """A push with a fallback after it and `deliver_within`: its app reports arrival
        through the tracking endpoint (so only when tracking is on)."""
        request, decision = work.pending.request, work.plan
        assert decision is not None
        return (request.deliver_within_ms > 0 and decision.channel == "push" and self.tracker is not None
                and work.identifier is not None
                and decision.channel_index + 1 < len(planning.channels_of(request)))

    async def sweep(self, now: int) -> int:
        """One page per partition of the histories sweep; how many users it forgot. Runs
        between rounds, so no round writes a history it is rewriting; the users of batches
        still out (which write theirs when they end) are left for the next pass."""
        forgotten = 0
        busy = {history_field(*ref) for ref in self._busy}
        for partition, cursor in self._sweep_cursors.items():
            following, page = await self.store.scan_histories(partition, cursor, SWEEP_PAGE)
            self._sweep_cursors[partition] = following
            gone: list[str] = []
            kept: dict[str, list[HistoryEntry]] = {}
            horizons: dict[str, int] = {}
            for field, entries in page.items():
                if field in busy:
                    continue
                account = field.partition("\0")[0]
                if account not in horizons:
                    horizons[account] = horizon_ms((await self.providers.settings(account)).caps)
                left = trimmed(entries, horizons[account], now)
                if not left:
                    gone.append(field)
                elif len(left) < len(entries):
                    kept[field] = left
            await self.store.rewrite_histories(partition, gone, kept)
            forgotten += len(gone)
        return forgotten

    @staticmethod
    async def linger_after(taken: int, began: float, stopping: asyncio.Event | None = None,
                           linger_ms: int = LINGER_MS) -> None:
        """After a light round (it took `taken` requests and began at `began`, on the
        loop's clock), waits out the rest of `linger_ms`, or until `stopping` is set."""
        if 0 < taken < LINGER_BELOW:
            await linger(began, linger_ms / 1000, stopping)

    async def run(self, stopping: asyncio.Event, idle_ms: int = 200, linger_ms: int = LINGER_MS) -> None:
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            try:
                if self._failed_ids:  # what a failed batch handed over is settled as `unknown`
                    failed = set(self._failed_ids)
                    await self._settle_orphans(failed)
                    self._failed_ids -= failed
                now = await self.clock.now_ms()
                if now >= self._next_sweep_ms:
                    self._next_sweep_ms = now + SWEEP_EVERY_MS
                    await self.sweep(now)
                began = loop.time()
                await self.linger_after(await self.step(block_ms=idle_ms), began, stopping, linger_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("channel router round failed; retrying")
                await asyncio.sleep(1.0)
        await self.drain()
