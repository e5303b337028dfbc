"""`where` filters applied to one event's properties as they arrive, with the same
semantics as the segment engine applies to stored columns (README, "Segments"):
types do not mix, numbers compare as float64, `ne` / `not_in` need the property,
`null` is absent, `contains` is case-insensitive, `before` / `after` read dates."""

from __future__ import annotations

import math
from typing import Any, Mapping

from kairos.segments.definition import PropertyFilter
from kairos.segments.timing import UTC, date_value_ms, resolve_bound


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _equal(value: Any, operand: Any) -> bool:
    if isinstance(operand, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(operand, bool) and value == operand
    if isinstance(operand, str) or isinstance(value, str):
        return isinstance(value, str) and value == operand
    number = _number(value)
    return number is not None and number == float(operand)


def passes(flt: PropertyFilter, props: Mapping[str, Any], now_ms: int) -> bool:
    value = props.get(flt.name)
    present = value is not None
    op, operand = flt.op, flt.value
    if op == "exists":
        return present
    if op == "not_exists":
        return not present
    if not present:
        return False
    if op in ("gt", "gte", "lt", "lte", "between"):
        number = _number(value)
        if number is None:
            return False
        if op == "between":
            return float(operand[0]) <= number <= float(operand[1])
        bound = float(operand)
        return {"gt": number > bound, "gte": number >= bound, "lt": number < bound, "lte": number <= bound}[op]
    if op == "eq":
        return _equal(value, operand)
    if op == "ne":
        return not _equal(value, operand)
    if op == "in":
        return any(_equal(value, o) for o in operand)
    if op == "not_in":
        return not any(_equal(value, o) for o in operand)
    if op == "contains":
        return isinstance(value, str) and str(operand).casefold() in value.casefold()
    assert op in ("before", "after"), op
    moment = date_value_ms(value)
    if math.isnan(moment):
        return False
    bound = resolve_bound(operand, now_ms, UTC)
    return moment < bound if op == "before" else moment > bound


def all_pass(filters: tuple[PropertyFilter, ...], props: Mapping[str, Any], now_ms: int) -> bool:
    return all(passes(f, props, now_ms) for f in filters)
