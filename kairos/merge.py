"""Moving a merged user's data to the user it was merged into, across shards.

The identity graph decides a merge atomically (kairos.identity_graph) and records it as
pending; this module carries it out in two idempotent steps:

1. seal the merged user on its shard: a log entry after which the shard refuses the
   user's records (their senders re-resolve and reach the survivor), and which hands
   back everything the user held;
2. absorb that into the survivor on its shard: a log entry with the data itself, so
   it is as durable as any batch, applied once however often it is repeated.

Then the merge is cleared. A coordinator that dies between steps leaves the merge
pending, and `sweep` (run by every ingest actor) finishes it: sealing again returns the
same data, and absorbing again is a no-op. If the survivor was itself merged away
meanwhile, its shard refuses the absorb and the data follows it to where it went.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

from kairos.identity_graph import Merge, MergedAway
from kairos.models import UserExport
from kairos.partitions import PartitionMap

logger = logging.getLogger(__name__)
CallShard = Callable[..., Awaitable[Any]]  # (shard, method, *args) -> result


class MergeGraph(Protocol):
    async def current(self, account: str, user: str) -> str: ...

    async def split(self, account: str, user: str, parts: list[tuple[str, list[str]]]) -> Merge: ...

    async def pending_merges(self) -> list[Merge]: ...

    async def finish_merges(self, merges: list[Merge]) -> None: ...


class MergeFailed(RuntimeError):
    """A merge's data could not be placed; it stays pending and a sweep retries it."""


class MergeCoordinator:
    # A survivor merged away again and again while its absorb is under way; beyond this
    # many hops something is wrong, and the merge is left to a later sweep.
    MAX_HOPS = 16

    def __init__(
        self, partition_map: PartitionMap, graph: MergeGraph, call_shard: CallShard,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.partition_map = partition_map
        self._graph = graph
        self._call = call_shard
        self._clock = clock
        self.merges_completed = 0

    def _shard_of(self, account: str, user: str) -> int:
        return self.partition_map.shard_of(self.partition_map.partition_of(account, user))

    async def complete(self, merges: list[Merge]) -> None:
        """Carry out the merges (and demerges); returns once each one's data is in place."""
        splits = [m for m in merges if m.parts]
        merges = [m for m in merges if not m.parts]
        for split in splits:
            await self._complete_split(split)
        if not merges:
            return
        sealed = await self._seal(merges)
        await self._absorb(sealed)
        await self._graph.finish_merges(merges)
        self.merges_completed += len(merges)

    async def demerge(self, account: str, user: str) -> bool:
        """Split a merged user back into the users merged into it (see
        kairos.store.merging for what stays). False if `user` merged nothing in."""
        shard = self._shard_of(account, user)
        parts: list[tuple[str, list[str]]] = await self._call(shard, "constituents", account, user)
        if not parts:
            return False
        try:
            split = await self._graph.split(account, user, parts)
        except MergedAway:
            return False  # split (or merged away) meanwhile, e.g. by a concurrent demerge
        await self._complete_split(split)
        return True

    async def _complete_split(self, split: Merge) -> None:
        exports: dict[str, UserExport] = await self._call(
            self._shard_of(split.account, split.user), "split", split.account, split.user, split.into)
        fresh = dict(split.parts)
        work = [(split.account, fresh.get(source, split.into), export) for source, export in exports.items()]
        await self._absorb(work)
        await self._graph.finish_merges([split])

    async def _seal(self, merges: list[Merge]) -> list[tuple[str, str, UserExport]]:
        groups: dict[tuple[str, int], list[Merge]] = {}
        for merge in merges:
            groups.setdefault((merge.account, self._shard_of(merge.account, merge.user)), []).append(merge)
        answers = await asyncio.gather(*(
            self._call(shard, "seal", account, [(m.user, m.into) for m in group])
            for (account, shard), group in groups.items()
        ))
        out: list[tuple[str, str, UserExport]] = []
        for ((account, _), group), exports in zip(groups.items(), answers):
            out.extend((account, merge.into, export) for merge, export in zip(group, exports))
        return out

    async def _absorb(self, work: list[tuple[str, str, UserExport]]) -> None:
        for _ in range(self.MAX_HOPS):
            groups: dict[tuple[str, int], list[tuple[str, UserExport]]] = {}
            for account, into, export in work:
                groups.setdefault((account, self._shard_of(account, into)), []).append((into, export))
            answers = await asyncio.gather(*(
                self._call(shard, "absorb", account, items) for (account, shard), items in groups.items()
            ))
            moved: list[tuple[str, str, UserExport]] = []
            for ((account, _), items), accepted in zip(groups.items(), answers):
                moved.extend((account, into, export) for (into, export), ok in zip(items, accepted) if not ok)
            if not moved:
                return
            # The survivor was merged away meanwhile: follow it.
            targets: dict[tuple[str, str], str] = {}
            for account, into, _ in moved:
                if (account, into) not in targets:
                    targets[(account, into)] = await self._graph.current(account, into)
            work = [(account, targets[(account, into)], export) for account, into, export in moved]
        raise MergeFailed(f"{len(work)} merged users still had no survivor after {self.MAX_HOPS} hops")

    async def sweep(self, older_than_s: float) -> int:
        """Finish merges left pending for longer than `older_than_s` (their coordinator
        died, or its call failed). Returns how many were finished."""
        cutoff = self._clock() - older_than_s
        stale = [m for m in await self._graph.pending_merges() if m.since <= cutoff]
        finished = 0
        for merge in stale:
            # One at a time: a merge that keeps failing must not hold back the others.
            try:
                await self.complete([merge])
                finished += 1
            except Exception:
                logger.exception("pending merge of user %s into %s (account %s) failed again",
                                 merge.user, merge.into, merge.account)
        return finished
