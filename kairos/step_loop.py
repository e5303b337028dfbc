"""The loop that journey runners and campaign schedulers share: load state from Redis
once, then take steps forever, re-reading the catalog every CATALOG_RESYNC_S (in case a
refresh missed this process) and trimming what was read every TRIM_EVERY_S.

A failure is final: memory may be ahead of what Redis holds, so the loop stops and
`on_failure` (the actor's exit) has Ray restart the process, which reloads from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol

from kairos.journeys.model import CATALOG_RESYNC_S

logger = logging.getLogger(__name__)

TRIM_EVERY_S = 10.0


class Catalog(Protocol):
    async def accounts(self) -> list[str]: ...


class StepLoop:
    """Subclasses set `catalog` and implement `_load`, `step`, `refresh` and `_trim`."""

    name = "step loop"  # for the log
    catalog: Catalog

    def __init__(self, on_failure: Callable[[BaseException], None] | None = None) -> None:
        self._lock = asyncio.Lock()  # one step, load or operator action at a time
        self._on_failure = on_failure
        self._task: asyncio.Task[None] | None = None
        self._loaded = False
        self.steps = 0
        self.failure: BaseException | None = None

    async def _load(self) -> None:
        raise NotImplementedError

    async def step(self) -> int:
        raise NotImplementedError

    async def refresh(self, account: str) -> None:
        raise NotImplementedError

    async def _trim(self) -> None:
        raise NotImplementedError

    async def load(self) -> None:
        """State from Redis, once. A failure part-way leaves it half-loaded, so it fails
        the loop (its actor restarts) rather than retry."""
        if self._loaded:
            return
        async with self._lock:
            if self._loaded:
                return
            try:
                await self._load()
            except Exception as exc:
                self._fail(exc)
                raise
            self._loaded = True

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run_forever())

    def _fail(self, exc: BaseException) -> None:
        logger.error("%s failed: %r", self.name, exc)
        self.failure = exc
        if self._on_failure is not None:
            self._on_failure(exc)

    async def _run_forever(self) -> None:
        await self.load()
        last_sync = last_trim = time.monotonic()
        while True:
            try:
                await self.step()
                if time.monotonic() - last_sync >= CATALOG_RESYNC_S:
                    last_sync = time.monotonic()
                    for account in await self.catalog.accounts():
                        await self.refresh(account)
                if time.monotonic() - last_trim >= TRIM_EVERY_S:
                    last_trim = time.monotonic()
                    await self._trim()
            except Exception as exc:
                logger.exception("%s step failed", self.name)
                if self.failure is None:
                    self._fail(exc)
                return
