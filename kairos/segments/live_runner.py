"""Runs a shard's live segments: loads their definitions, re-evaluates after each flush
and on a timer, and hands the signals to their log. Signals that cannot be written
(Redis away for a moment) wait and go with the next batch of signals."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol

from kairos.segments.catalog import SavedSegment
from kairos.segments.live import LiveSegments, Signal
from kairos.store.partition import PartitionState

logger = logging.getLogger(__name__)
# Signals held while their log is unreachable; past this the oldest are dropped (and logged).
MAX_PENDING_SIGNALS = 200_000
# How often a shard re-reads the catalog's live segments, in case a refresh missed it.
RESYNC_S = 30.0


class LiveSource(Protocol):
    async def all_live(self) -> dict[str, list[SavedSegment]]: ...

    async def live(self, account: str) -> list[SavedSegment]: ...


class SignalSink(Protocol):
    async def emit(self, signals: list[Signal]) -> None: ...


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class LiveSegmentRunner:
    def __init__(self, source: LiveSource, sink: SignalSink, tick_s: float,
                 clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.segments = LiveSegments()
        self._source = source
        self._sink = sink
        self._tick_s = tick_s
        self._clock_ms = clock_ms
        self._pending: list[Signal] = []
        # Flushes and ticks both emit; one at a time keeps signals in order and each once.
        self._emit_lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None

    async def load(self, states: dict[int, PartitionState]) -> None:
        """Every account's live segments, evaluated in full (at start and after recovery).
        A failure here is logged, never fatal: the shard serves its data regardless, and
        the periodic resync tries again."""
        try:
            await self._sync(states)
        except Exception:
            logger.exception("could not load live segments; retrying with the next resync")
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.ensure_future(self._tick_forever(states))

    async def _sync(self, states: dict[int, PartitionState]) -> None:
        """Take up every account's live segments from the catalog (unchanged versions
        keep their membership): catches a save or delete whose refresh missed this shard."""
        now = self._clock_ms()
        for account, saved in (await self._source.all_live()).items():
            self.segments.set_segments(account, saved, states, now)

    async def refresh(self, account: str, states: dict[int, PartitionState]) -> dict[str, int]:
        """Take up the account's current live segments (after a save or delete)."""
        self.segments.set_segments(account, await self._source.live(account), states, self._clock_ms())
        return self.segments.definitions(account)

    async def after_apply(self, states: dict[int, PartitionState]) -> None:
        if self.segments.any:
            await self._emit(self.segments.after_apply(states, self._clock_ms()))

    async def tick(self, states: dict[int, PartitionState]) -> None:
        await self._emit(self.segments.tick(states, self._clock_ms()))

    async def _tick_forever(self, states: dict[int, PartitionState]) -> None:
        last_sync = time.monotonic()
        while True:
            await asyncio.sleep(self._tick_s)
            try:
                if time.monotonic() - last_sync >= RESYNC_S:
                    last_sync = time.monotonic()
                    await self._sync(states)
                await self.tick(states)
            except Exception:
                logger.exception("live segment tick failed; trying again in %ss", self._tick_s)

    async def _emit(self, signals: list[Signal]) -> None:
        async with self._emit_lock:
            batch = self._pending + signals
            if not batch:
                return
            try:
                await self._sink.emit(batch)
                self._pending = []
            except Exception:
                logger.exception("could not write %d segment signals; keeping them for the next try", len(batch))
                if len(batch) > MAX_PENDING_SIGNALS:
                    logger.error("dropping %d oldest segment signals", len(batch) - MAX_PENDING_SIGNALS)
                    batch = batch[-MAX_PENDING_SIGNALS:]
                self._pending = batch

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
