"""Actors freeze what they hold once started, so full collections skip it; and only once,
since the runtime calls `start` on every actor every two seconds."""

from __future__ import annotations

import gc
from typing import Any, Iterator

import pytest

from actors import heap

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fresh_heap() -> Iterator[list[int]]:
    """Collections run while the test runs, by generation; undoes the freeze after."""
    generations: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    heap._frozen = False
    gc.callbacks.append(record)
    try:
        yield generations
    finally:
        gc.callbacks.remove(record)
        gc.unfreeze()
        heap._frozen = False


def test_objects_alive_at_start_leave_the_collectors_passes(fresh_heap: list[int]) -> None:
    state = [{"user": i} for i in range(1000)]
    before = gc.get_freeze_count()
    fresh_heap.clear()
    heap.freeze_startup_objects()
    assert gc.get_freeze_count() >= before + len(state)
    # Garbage is collected first rather than frozen for good.
    assert fresh_heap == [2]


def test_later_starts_neither_collect_nor_freeze_again(fresh_heap: list[int]) -> None:
    heap.freeze_startup_objects()
    frozen = gc.get_freeze_count()
    made_after = [{"user": i} for i in range(1000)]
    fresh_heap.clear()
    heap.freeze_startup_objects()
    assert 2 not in fresh_heap
    assert gc.get_freeze_count() == frozen
    assert made_after
