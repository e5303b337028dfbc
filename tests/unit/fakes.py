"""Test doubles for the core's I/O protocols, with the semantics of the real thing."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from kairos.identity_graph import Merge
from kairos.log import stream_id_order


class FakeLog:
    """Test double for kairos.log.PartitionLog, with Redis stream semantics: ids grow,
    `read_after` is exclusive, a snapshot trims entries older than the id it covers
    (MINID keeps the covered entry itself). A failed append writes nothing, unless
    `commit_then_fail` is set: then it commits and loses the reply, as MULTI/EXEC can."""

    def __init__(self) -> None:
        self.streams: dict[int, list[tuple[str, str, bytes]]] = {}
        self.snapshots: dict[int, tuple[bytes, str]] = {}
        self.chunks: dict[tuple[int, str], bytes] = {}
        self.chunk_writes = 0
        self.append_calls = 0
        self.appended = 0
        self.fail_with: Exception | None = None
        self.commit_then_fail = False
        self._seq = 0

    async def append(self, entries: list[tuple[int, str, bytes]]) -> list[str]:
        self.append_calls += 1
        await asyncio.sleep(0)  # a network round trip: other coroutines run meanwhile
        if self.fail_with is not None and not self.commit_then_fail:
            raise self.fail_with
        ids = []
        for partition, batch_id, payload in entries:
            self._seq += 1
            log_id = f"{self._seq}-0"
            self.streams.setdefault(partition, []).append((log_id, batch_id, payload))
            self.appended += 1
            ids.append(log_id)
        if self.fail_with is not None:
            raise self.fail_with
        return ids

    async def read_after(self, partition: int, after_id: str) -> list[tuple[str, str, bytes]]:
        after = stream_id_order(after_id)
        return [e for e in self.streams.get(partition, []) if stream_id_order(e[0]) > after]

    async def load_snapshot(self, partition: int) -> bytes | None:
        snap = self.snapshots.get(partition)
        return snap[0] if snap else None

    async def load_chunks(self, partition: int, chunk_ids: list[str]) -> dict[str, bytes]:
        return {c: self.chunks[(partition, c)] for c in chunk_ids}

    async def save_snapshot(self, partition: int, data: bytes, covers_id: str, chunks: dict[str, bytes]) -> None:
        for chunk_id, chunk in chunks.items():
            assert (partition, chunk_id) not in self.chunks, "a sealed chunk is written once"
            self.chunks[(partition, chunk_id)] = chunk
            self.chunk_writes += 1
        self.snapshots[partition] = (data, covers_id)
        keep = stream_id_order(covers_id)
        self.streams[partition] = [e for e in self.streams.get(partition, []) if stream_id_order(e[0]) >= keep]

    async def stream_bytes(self, partition: int) -> int:
        return sum(len(payload) for _, _, payload in self.streams.get(partition, []))

    def batch_ids(self) -> list[str]:
        return [b for stream in self.streams.values() for _, b, _ in stream]

    def entries(self) -> int:
        return sum(len(s) for s in self.streams.values())


class FakeGraph:
    """Test double of kairos.identity_graph.IdentityGraph with the same rules: a new
    identifier gets a new user, the oldest user of a tied group survives."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], str] = {}
        self.seq = 0
        self.calls = 0
        self.merges: list[Merge] = []
        self.forward: dict[tuple[str, str], str] = {}
        self.pending: dict[tuple[str, str], Merge] = {}

    async def resolve(self, account: str, groups: list[list[str]]) -> tuple[list[str], list[Merge]]:
        self.calls += 1
        await asyncio.sleep(0)
        users, merges = [], []
        for group in groups:
            known = sorted({self.ids[(account, i)] for i in group if (account, i) in self.ids}, key=int)
            if known:
                survivor = known[0]
            else:
                self.seq += 1
                survivor = str(self.seq)
            for loser in known[1:]:
                for key, user in list(self.ids.items()):
                    if key[0] == account and user == loser:
                        self.ids[key] = survivor
                merges.append(Merge(account, loser, survivor))
                self.forward[(account, loser)] = survivor
                self.pending[(account, loser)] = merges[-1]
            for identifier in group:
                self.ids[(account, identifier)] = survivor
            users.append(survivor)
        self.merges.extend(merges)
        return users, merges


    async def split(self, account: str, user: str, parts: list[tuple[str, list[str]]]) -> Merge:
        await asyncio.sleep(0)
        fresh_parts = []
        for source, identifiers in parts:
            self.seq += 1
            fresh = str(self.seq)
            for identifier in identifiers:
                if self.ids.get((account, identifier)) == user:
                    self.ids[(account, identifier)] = fresh
            fresh_parts.append((source, fresh))
        self.seq += 1
        remainder = str(self.seq)
        for key, owner in list(self.ids.items()):
            if key[0] == account and owner == user:
                self.ids[key] = remainder
        self.forward[(account, user)] = remainder
        merge = Merge(account, user, remainder, 0.0, tuple(fresh_parts))
        self.pending[(account, user)] = merge
        return merge

    async def current(self, account: str, user: str) -> str:
        while (account, user) in self.forward:
            user = self.forward[(account, user)]
        return user

    async def pending_merges(self) -> list[Merge]:
        return list(self.pending.values())

    async def finish_merges(self, merges: list[Merge]) -> None:
        for merge in merges:
            self.pending.pop((merge.account, merge.user), None)


class FakeJourneyStore:
    """Test double for kairos.journeys.state_store.JourneyStateStore: what is committed
    lives in dicts and lists. `fail` makes the next commit raise, either before writing
    anything ("before") or after writing all of it ("after", a reply lost after EXEC)."""

    def __init__(self, partition_map: Any, partitions: list[int]) -> None:
        self._map = partition_map
        self.partitions = partitions
        self.streams: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        self.positions: dict[tuple[str, str, str], Any] = {}
        self.entry_rows: dict[tuple[str, str, str], tuple[int, int]] = {}
        self.outbox: list[Any] = []
        self.stats: dict[tuple[str, str], dict[str, int]] = {}
        self.cursors: dict[int, dict[str, str]] = {p: {} for p in partitions}
        self.fail: str | None = None

    def partition_of(self, account: str, user: str) -> int:
        return self._map.partition_of(account, user)

    def add(self, stream: str, fields: dict[bytes, bytes]) -> None:
        entries = self.streams.setdefault(stream, [])
        entries.append((f"{len(entries) + 1}-0".encode(), fields))

    async def load_positions(self) -> list[tuple[str, str, str, Any]]:
        return [(a, n, u, copy.copy(p)) for (a, n, u), p in self.positions.items()]

    async def load_cursors(self) -> dict[int, dict[str, str]]:
        return {p: dict(c) for p, c in self.cursors.items()}

    async def entries(self, wanted: list[tuple[str, str, str]]) -> list[tuple[int, int] | None]:
        return [self.entry_rows.get(k) for k in wanted]

    async def commit(self, changes: Any, cursors: dict[int, dict[str, str]]) -> None:
        await asyncio.sleep(0)
        failing, self.fail = self.fail, None
        if failing == "before":
            raise ConnectionError("Redis went away before EXEC")
        for key, pos in changes.positions.items():
            if pos is None:
                self.positions.pop(key, None)
            else:
                self.positions[key] = copy.copy(pos)
        self.entry_rows.update(changes.entries)
        self.outbox.extend(changes.sends)
        for key, fields in changes.stats.items():
            totals = self.stats.setdefault(key, {})
            for name, delta in fields.items():
                totals[name] = totals.get(name, 0) + delta
        for partition, values in cursors.items():
            self.cursors[partition].update(values)
        if failing == "after":
            raise ConnectionError("EXEC ran, and its reply was lost")

    async def read(self, after: dict[str, str], count: int, block_ms: int | None) -> list[tuple[str, list[Any]]]:
        await asyncio.sleep(0)
        found = []
        for stream, last in after.items():
            fresh = [e for e in self.streams.get(stream, []) if stream_id_order(e[0].decode()) > stream_id_order(last)][:count]
            if fresh:
                found.append((stream, fresh))
        return found

    async def last_id(self, stream: str) -> str:
        entries = self.streams.get(stream)
        return entries[-1][0].decode() if entries else "0-0"

    async def trim_through(self, stream: str, last_read: str) -> None:
        return None
