"""A shard's part of an analytics query: one partial answer per partition it owns that
holds the account; the coordinator combines them (see kairos.query_coordinator)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from kairos.analytics import funnels, retention, rfm, trends
from kairos.analytics.common import Scope
from kairos.analytics.queries import parse_funnel, parse_retention, parse_rfm, parse_trend
from kairos.segments.evaluate import StoreQuery
from kairos.segments.timing import zone
from kairos.store.partition import PartitionState

PARSERS: dict[str, Callable[[Any], Any]] = {
    "trend": parse_trend, "funnel": parse_funnel, "retention": parse_retention, "rfm": parse_rfm,
}
_PARTIALS: dict[str, Callable[..., Any]] = {
    "trend": trends.trend_partial, "funnel": funnels.funnel_partial, "retention": retention.retention_partial,
    "rfm": rfm.rfm_partial,
}


def analytics_partials(states: Iterable[PartitionState], account: str, kind: str, raw_query: Any, now_ms: int,
                       tz: str) -> list[Any]:
    query, tzinfo, partial = PARSERS[kind](raw_query), zone(tz), _PARTIALS[kind]
    parts = []
    for state in states:
        store = state.account(account)
        if store is not None and store.user_count:
            scope = Scope(StoreQuery(store, now_ms, tzinfo), query.segment)
            parts.append(partial(scope, query, now_ms, tzinfo))
    return parts
