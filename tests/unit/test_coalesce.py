"""Coalescing: items submitted while a call is in flight share the next call."""

from __future__ import annotations

import asyncio

import pytest

from kairos.coalesce import Coalescer

pytestmark = pytest.mark.timeout(30)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_idle_submission_goes_at_once_and_busy_ones_share_a_call() -> None:
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def send(items: list[int]) -> None:
        calls.append(items)
        if len(calls) == 1:
            await gate.wait()

    coalescer: Coalescer[int] = Coalescer(send, max_in_flight=1, max_items=3)
    first = asyncio.create_task(coalescer.submit(0))
    await _settle()
    assert calls == [[0]]
    later = [asyncio.create_task(coalescer.submit(i)) for i in range(1, 6)]
    await _settle()
    assert calls == [[0]], "nothing more leaves while the one call is in flight"
    gate.set()
    await asyncio.gather(first, *later)
    assert calls == [[0], [1, 2, 3], [4, 5]]


async def test_a_failed_call_fails_exactly_its_items() -> None:
    async def send(items: list[str]) -> None:
        if "bad" in items:
            raise ConnectionError("shard gone")

    coalescer: Coalescer[str] = Coalescer(send, max_in_flight=1, max_items=1)
    results = await asyncio.gather(coalescer.submit("ok"), coalescer.submit("bad"), coalescer.submit("fine"),
                                   return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ConnectionError)


def test_bounds_are_validated() -> None:
    async def send(items: list[int]) -> None: ...

    with pytest.raises(ValueError):
        Coalescer(send, max_in_flight=0, max_items=1)
