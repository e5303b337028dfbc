"""Coalescing of many small submissions into few calls.

A Ray call costs ~0.5-1 ms of CPU, far more than handling a record, so no hop makes
one call per request under load: items submitted while `max_in_flight` calls are out
wait and leave together in the next call. With nothing in flight an item leaves at
once, so coalescing adds no latency to an idle system. Every item of a call gets that
call's result.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    def __init__(self, send: Callable[[list[T]], Awaitable[Any]], max_in_flight: int, max_items: int) -> None:
        if max_in_flight < 1 or max_items < 1:
            raise ValueError("max_in_flight and max_items must be >= 1")
        self._send = send
        self._max_in_flight = max_in_flight
        self._max_items = max_items
        self._queue: list[tuple[T, asyncio.Future[Any]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self.calls = 0
        self.items = 0

    async def submit(self, item: T) -> Any:
        """The result of the call carrying `item`, once it succeeded; its error otherwise."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._pump()
        return await future

    def _pump(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            batch, self._queue = self._queue[: self._max_items], self._queue[self._max_items :]
            self._in_flight += 1
            self.calls += 1
            self.items += len(batch)
            task = asyncio.ensure_future(self._call(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[tuple[T, asyncio.Future[Any]]]) -> None:
        try:
            result = await self._send([item for item, _ in batch])
        except BaseException as exc:  # cancellation included: no submitter waits forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
        else:
            for _, future in batch:
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._pump()


async def linger(began: float, seconds: float, stopping: asyncio.Event | None = None) -> None:
    """Waits until `seconds` after `began` (the loop's clock), or until `stopping` is set:
    the pause after a light round of a polling loop, so that the next one carries more
    for the same fixed cost."""
    left = seconds - (asyncio.get_running_loop().time() - began)
    if left <= 0:
        return
    if stopping is None:
        await asyncio.sleep(left)
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stopping.wait(), left)
