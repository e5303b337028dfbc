"""CleverTap's download and count query bodies, run on the segment engine.

    {"event_name": "Charged", "from": 20260901, "to": 20260930,
     "event_properties": [{"name": "Category", "operator": "equals", "value": "Shoes"}],
     "common_profile_properties": {"profile_fields": [{"name": "City", "operator": "equals", "value": "Pune"}]}}

become an event filter (`where`) and a profile condition, in the segment language.
"""

from __future__ import annotations

from typing import Any

from kairos.segments.definition import SegmentError, parse_segment, parse_where

# CleverTap's operator names -> the segment language's.
OPERATORS = {
    "equals": "eq", "not_equals": "ne", "contains": "contains", "greater_than": "gt",
    "greater_than_equals": "gte", "less_than": "lt", "less_than_equals": "lte", "between": "between",
    "exists": "exists", "not_exists": "not_exists", "in": "in", "not_in": "not_in",
}


def event_filters(raw: Any) -> list[dict[str, Any]]:
    """`event_properties` as `where` filters (validated)."""
    if raw is None:
        return []
    filters = _filters(raw, "event_properties", "property")
    parse_where(filters, "event_properties")
    return filters


def profile_condition(raw: Any) -> dict[str, Any] | None:
    """`common_profile_properties` as a segment definition (validated), or None."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"profile_fields"}:
        raise SegmentError("common_profile_properties", "must be an object with 'profile_fields'")
    fields = _filters(raw.get("profile_fields"), "common_profile_properties.profile_fields", "profile")
    if not fields:
        return None
    for i, field in enumerate(fields):
        parse_segment(field, f"common_profile_properties.profile_fields[{i}]")
    combined = {"all": fields}
    parse_segment(combined, "common_profile_properties.profile_fields")  # its limits hold for the whole
    return combined


def _filters(raw: Any, path: str, key: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise SegmentError(path, "must be a list of {name, operator, value}")
    out = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "operator", "value"}:
            raise SegmentError(where, "must be an object with 'name', 'operator' and 'value'")
        operator = item.get("operator", "equals")
        if not isinstance(operator, str) or operator not in OPERATORS:
            raise SegmentError(f"{where}.operator", f"{operator!r} is not one of {', '.join(OPERATORS)}")
        op = OPERATORS[operator]
        value = item.get("value")
        if op == "eq" and isinstance(value, list):
            op = "in"  # CleverTap's equals takes a list of alternatives too
        converted: dict[str, Any] = {key: item.get("name"), "op": op}
        if op not in ("exists", "not_exists"):
            converted["value"] = value
        out.append(converted)
    return out
