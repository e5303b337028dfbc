"""Scatter-gather for queries: ask every shard for its exact part, then combine.

Plain Python over a `call_shard` function, so the gateway (and tests) drive it without
Ray. There is no coordinator actor: each gateway process coordinates its own requests,
so no single actor stands in every query's path.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from kairos.analytics import funnels, retention, rfm, trends
from kairos.analytics.common import calendar, date_range
from kairos.analytics.partials import PARSERS
from kairos.partitions import PartitionMap
from kairos.segments.timing import zone

CallShard = Callable[..., Awaitable[Any]]


class QueryCoordinator:
    def __init__(self, partition_map: PartitionMap, call_shard: CallShard) -> None:
        self.partition_map = partition_map
        self._call = call_shard

    async def scatter(self, method: str, *args: Any) -> list[Any]:
        shards = range(self.partition_map.shards)
        return list(await asyncio.gather(*(self._call(s, method, *args) for s in shards)))

    async def segment_count(self, account: str, definition: Any, now_ms: int, tz: str) -> int:
        return sum(await self.scatter("segment_count", account, definition, now_ms, tz))

    async def refresh_live(self, account: str) -> None:
        await self.scatter("refresh_live", account)

    async def pages(
        self, method: str, leading: tuple[Any, ...], partition: int, start: int, limit: int,
    ) -> tuple[list[Any], tuple[int, int] | None]:
        """Up to `limit` items, partition by partition from (partition, start), each shard
        answering `method(*leading, partition, start, limit)` with a page and where its
        next page starts; returns the items and where the next page begins (None at the end)."""
        items: list[Any] = []
        partitions = self.partition_map.partitions
        while partition < partitions and len(items) < limit:
            shard = self.partition_map.shard_of(partition)
            page, next_start = await self._call(shard, method, *leading, partition, start, limit - len(items))
            items.extend(page)
            if next_start is None:
                partition, start = partition + 1, 0
            else:
                start = next_start
        return items, (partition, start) if partition < partitions else None

    async def segment_members(
        self, account: str, definition: Any, now_ms: int, tz: str, partition: int, start: int, limit: int,
    ) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
        return await self.pages("segment_members", (account, definition, now_ms, tz), partition, start, limit)

    async def _partials(self, kind: str, account: str, query: Any, now_ms: int, tz: str) -> list[Any]:
        answers = await self.scatter("analytics", account, kind, query, now_ms, tz)
        return [part for answer in answers for part in answer]

    async def analytics(self, kind: str, account: str, raw_query: Any, now_ms: int, tz: str) -> Any:
        """A trend, funnel, retention or RFM answer (raw_query is validated first)."""
        query, tzinfo = PARSERS[kind](raw_query), zone(tz)
        check_ranges(kind, query, now_ms, tzinfo)  # a bad range is the caller's 400, not a shard's failure
        parts = await self._partials(kind, account, raw_query, now_ms, tz)
        if kind == "trend":
            return trends.combine_trend(parts, query, now_ms, tzinfo)
        if kind == "funnel":
            return funnels.combine_funnel(parts, query)
        if kind == "retention":
            return retention.combine_retention(parts, query, now_ms, tzinfo)
        assert kind == "rfm", kind
        return rfm.combine_rfm(parts)

def check_ranges(kind: str, query: Any, now_ms: int, tz: Any) -> None:
    if kind == "retention":
        retention.retention_calendar(query, now_ms, tz)
        return
    from_ms, to_ms = date_range(query.window, now_ms, tz)
    if kind == "trend" and query.by != "property":
        calendar(query.by, from_ms, to_ms, tz)
