"""What the actors that run a StepLoop (journey actors, campaign schedulers) share:
starting the loop, passing refreshes on, and exiting when it fails so that Ray
restarts the process and it reloads from Redis."""

from __future__ import annotations

import logging
import os

from actors.heap import freeze_startup_objects
from kairos.step_loop import StepLoop

logger = logging.getLogger(__name__)


class StepLoopActor:
    def __init__(self, loop: StepLoop) -> None:
        self._loop = loop

    @staticmethod
    def _exit(failure: BaseException) -> None:
        # Memory is ahead of what Redis holds: Ray restarts us, and we reload from Redis.
        logger.error("exiting to reload state from Redis: %r", failure)
        os._exit(1)

    def _check(self) -> None:
        if self._loop.failure is not None:
            self._exit(self._loop.failure)

    async def start(self) -> None:
        self._check()
        await self._loop.load()
        self._loop.start()
        freeze_startup_objects()

    async def refresh(self, account: str) -> None:
        self._check()
        await self._loop.refresh(account)

    def pid(self) -> int:
        return os.getpid()
