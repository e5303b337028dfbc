"""Segment definitions: what parses, and the error (with its path) for what does not."""

from __future__ import annotations

from typing import Any

import pytest

from kairos.segments.definition import (
    AllOf, Bound, EventCondition, FirstLastCondition, Not, ProfileCondition, SegmentError, SequenceCondition, Window,
    parse_segment,
)

pytestmark = pytest.mark.timeout(10)


def test_a_nested_definition_parses_into_its_tree() -> None:
    parsed = parse_segment({"all": [
        {"profile": "Age", "op": "gte", "value": 30},
        {"not": {"did": "Charged", "within": "7d"}},
        {"did": "Charged", "where": [{"property": "Category", "op": "in", "value": ["Shoes", "Bags"]}],
         "within": {"from": "2026-01-01", "to": 20260131}, "sum": "Amount", "op": "gte", "value": 500},
        {"first_time": "App Launched", "within": "24h"},
        {"sequence": ["Added To Cart", {"event": "Charged"}], "gap": "1h"},
    ]})
    assert isinstance(parsed, AllOf)
    profile, negated, spend, first, sequence = parsed.items
    assert isinstance(profile, ProfileCondition) and profile.filter.value == 30
    assert isinstance(negated, Not) and isinstance(negated.item, EventCondition)
    assert negated.item.window == Window(Bound(ago_ms=7 * 86_400_000), None)
    assert isinstance(spend, EventCondition) and (spend.metric, spend.metric_property, spend.op) == ("sum", "Amount", "gte")
    assert spend.window == Window(Bound(day="2026-01-01"), Bound(day="2026-01-31"), True)
    assert spend.where[0].value == ("Shoes", "Bags")
    assert isinstance(first, FirstLastCondition) and first.first
    assert isinstance(sequence, SequenceCondition) and sequence.gap_ms == 3_600_000


def test_did_means_at_least_once_and_did_not_negates() -> None:
    did = parse_segment({"did": "Charged"})
    assert isinstance(did, EventCondition) and (did.metric, did.op, did.value, did.negate) == ("count", "gte", 1, False)
    assert parse_segment({"did_not": "Charged"}).negate  # type: ignore[union-attr]


@pytest.mark.parametrize("definition, path, words", [
    ([], "segment", "must be an object"),
    ({}, "segment", "exactly one of"),
    ({"did": "A", "profile": "B"}, "segment", "exactly one of"),
    ({"all": []}, "segment.all", "non-empty list"),
    ({"all": [{"profile": "Age", "op": "bigger", "value": 3}]}, "segment.all[0].op", "'bigger' is not one of"),
    ({"any": [{"did": "A"}, {"did": "B", "within": "7x"}]}, "segment.any[1].within", "not a duration"),
    ({"did": "A", "within": {"from": "2026-13-01"}}, "segment.within.from", "not a date"),
    ({"did": "A", "within": {"from": "2026-01-01T10:00:00"}}, "segment.within.from", "no UTC offset"),
    ({"did": "A", "within": {}}, "segment.within", "needs 'from', 'to'"),
    ({"did": "A", "where": [{"property": "x", "op": "gt", "value": "ten"}]}, "segment.where[0].value", "not a number"),
    ({"did": "A", "where": {"property": "x"}}, "segment.where", "must be a list"),
    ({"did": "A", "sum": "Amount"}, "segment", "needs 'op' and 'value'"),
    ({"did": "A", "sum": "Amount", "avg": "Amount", "op": "gt", "value": 1}, "segment", "not several"),
    ({"did": "A", "op": "gt", "value": 1}, "segment", "compare an aggregate"),
    ({"did": "A", "count": {"op": "gte"}}, "segment.count", "needs 'op' and 'value'"),
    ({"did": "A", "colour": "red"}, "segment.colour", "is not a field here"),
    ({"did": ""}, "segment.did", "must be an event name"),
    ({"profile": "Age", "op": "between", "value": [5, 1]}, "segment.value", "above high"),
    ({"profile": "Age", "op": "in", "value": []}, "segment.value", "list of 1 to"),
    ({"profile": "Age", "op": "exists", "value": 1}, "segment.value", "takes no value"),
    ({"profile": "Age", "op": "eq"}, "segment", "needs a 'value'"),
    ({"profile": "Age", "op": "eq", "value": {"a": 1}}, "segment.value", "not a string, boolean or number"),
    ({"profile": "Age", "op": "eq", "value": float("nan")}, "segment.value", "not a string, boolean or number"),
    ({"profile": "Age", "op": "eq", "value": 10**400}, "segment.value", "at most 64-bit"),
    ({"profile": "Age", "op": "gt", "value": -(2**70)}, "segment.value", "at most 64-bit"),
    ({"did": "A", "count": {"op": "gte", "value": 10**30}}, "segment.count.value", "at most 64-bit"),
    ({"did": "A", "within": {"from": "30d", "to": "9999-12-31"}}, "segment.within.to", "outside the years"),
    ({"did": "A", "within": {"from": "0001-01-01"}}, "segment.within.from", "outside the years"),
    ({"did": "A", "within": {"from": "0001-01-01T00:00:00+01:00"}}, "segment.within.from", "outside the years"),
    ({"did": "A", "within": {"from": 10**30}}, "segment.within.from", "epoch seconds"),
    ({"did": "A", "within": {"from": "10d", "to": "20d"}}, "segment.within.from", "not before 'to'"),
    ({"did": "A", "within": {"from": "2026-02-01", "to": "2026-01-01"}}, "segment.within.from", "not before 'to'"),
    ({"first_time": "A"}, "segment", "needs 'within'"),
    ({"sequence": ["A"], "gap": "1h"}, "segment.sequence", "2 to 10 steps"),
    ({"sequence": ["A", 3], "gap": "1h"}, "segment.sequence[1]", "event name or an object"),
    ({"sequence": ["A", "B"]}, "segment", "needs 'gap'"),
    ({"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {
        "did": "A"}}}}}}}}}}}}}}, "segment" + ".not" * 13, "deeper than"),
])
def test_a_bad_definition_names_its_path(definition: Any, path: str, words: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse_segment(definition)
    assert caught.value.path == path
    assert words in caught.value.message


def test_too_many_conditions_are_refused() -> None:
    with pytest.raises(SegmentError, match="at most 256 conditions"):
        parse_segment({"any": [{"did": f"E{i}"} for i in range(300)]})
