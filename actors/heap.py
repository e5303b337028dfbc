"""Keeps the garbage collector's full passes short in long-lived actor processes.

A full collection walks every container object the process holds, with the event loop
stopped. Most of them are made at start and live as long as the process: imported
modules (the gateway's imports alone are ~120,000 objects: Ray, aiohttp, boto3),
clients, and the state an actor loads. In the journey benchmark a full collection held
the gateway's loop for 70-133 ms, and the uploads waiting on it were the slowest of
their run. Freezing what exists once the actor has started takes those objects out of
every later pass. Frozen objects are still freed by reference counting; only a cycle
among them is never collected, which bounds the cost to what was alive at the freeze.
"""

from __future__ import annotations

import gc

_frozen = False


def freeze_startup_objects() -> None:
    """Once per process, after the actor has loaded: collect what start-up left behind,
    then move every object still alive to the collector's permanent generation."""
    global _frozen
    if _frozen:
        return
    gc.collect()
    gc.freeze()
    _frozen = True
