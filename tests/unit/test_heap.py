"""Actors freeze what they hold once started, so full collections skip it; and only once,
since the runtime calls `start` on every actor every two seconds."""

from __future__ import annotations

import gc
import weakref
from typing import Any, Iterator

import pytest

from actors import heap

pytestmark = pytest.mark.timeout(30)


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def fresh_heap() -> Iterator[list[int]]:
    """The generations of the collections that run during the test; undoes the freeze."""
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


def test_state_alive_at_start_leaves_the_collectors_passes(fresh_heap: list[int]) -> None:
    state = [{"user": i} for i in range(1000)]
    heap.freeze_startup_objects()
    assert not any(obj is state for obj in gc.get_objects())


def test_garbage_is_collected_before_the_freeze_not_kept_for_good(fresh_heap: list[int]) -> None:
    gc.disable()  # no collection of our own between dropping the cycle and the freeze
    try:
        garbage = Node()
        gone = weakref.ref(garbage)
        del garbage
        heap.freeze_startup_objects()
    finally:
        gc.enable()
    assert gone() is None


def test_later_starts_neither_collect_nor_freeze_again(fresh_heap: list[int]) -> None:
    heap.freeze_startup_objects()
    frozen = gc.get_freeze_count()
    made_after = Node()
    fresh_heap.clear()
    heap.freeze_startup_objects()
    assert 2 not in fresh_heap
    assert gc.get_freeze_count() <= frozen
    assert any(obj is made_after for obj in gc.get_objects())
