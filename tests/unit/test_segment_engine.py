"""The segment engine against the plain-Python reference, on randomized accounts with
merged users, in several time zones: the member sets must be equal, not close."""

from __future__ import annotations

import random
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from kairos.models import EventRecord
from kairos.segments.definition import parse_segment
from kairos.segments.evaluate import StoreQuery
from kairos.store.account_store import AccountStore
from kairos.store.columns import StringTable, ValueCodec
from tests.unit.random_accounts import CATEGORIES, CITIES, EVENTS, NOW, ZONES, build

pytestmark = pytest.mark.timeout(120)

def members(store: AccountStore, definition: dict[str, Any], tz: str) -> set[str]:
    mask = StoreQuery(store, NOW, ZoneInfo(tz)).users(parse_segment(definition))
    return {store.user_keys[i] for i in np.flatnonzero(mask)}


FIXED: list[dict[str, Any]] = [
    {"profile": "Age", "op": "gte", "value": 30},
    {"profile": "Age", "op": "between", "value": [20, 40.5]},
    {"profile": "City", "op": "eq", "value": "Paris"},
    {"profile": "City", "op": "ne", "value": "Paris"},
    {"profile": "City", "op": "in", "value": ["Lyon", "Pune"]},
    {"profile": "City", "op": "not_in", "value": ["Lyon", "Pune"]},
    {"profile": "City", "op": "contains", "value": "PAR"},
    {"profile": "Premium", "op": "eq", "value": True},
    {"profile": "Age", "op": "exists"},
    {"profile": "Age", "op": "not_exists"},
    {"profile": "Signup", "op": "after", "value": "90d"},
    {"profile": "Signup", "op": "before", "value": "2026-05-01"},
    {"did": "Charged"},
    {"did_not": "Charged", "within": "7d"},
    {"did": "Charged", "within": "30d", "count": {"op": "gte", "value": 3}},
    {"did": "Charged", "where": [{"property": "Category", "op": "eq", "value": "Shoes"}], "within": "14d"},
    {"did": "Charged", "within": "30d", "sum": "Amount", "op": "gte", "value": 500},
    {"did": "Charged", "avg": "Amount", "op": "lt", "value": 100},
    {"did": "Added To Cart", "min": "Amount", "op": "lte", "value": 10},
    {"did": "Searched", "max": "Amount", "op": "between", "value": [100, 300]},
    {"did": "Charged", "within": {"from": "20d", "to": "10d"}},
    {"did": "Charged", "within": {"from": "2026-09-01", "to": "2026-09-10"}},
    {"first_time": "App Launched", "within": "7d"},
    {"last_time": "Charged", "within": {"from": "30d", "to": "10d"}},
    {"sequence": ["Added To Cart", "Charged"], "gap": "1h"},
    {"sequence": ["Searched", {"event": "Added To Cart", "where": [{"property": "Gift", "op": "eq", "value": True}]},
                  "Charged"], "gap": "2d", "within": "30d"},
    {"all": [{"did": "Charged"}, {"not": {"profile": "City", "op": "eq", "value": "Lyon"}}]},
    {"any": [{"did": "Charged", "within": "3d"}, {"profile": "Score", "op": "gt", "value": 20}]},
    {"everyone": True},
    {"not": {"everyone": True}},
]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fixed_conditions_match_the_reference(seed: int) -> None:
    store, ref = build(seed)
    assert ref.merged, "the data must include merged users"
    for tz in ZONES:
        for definition in FIXED:
            expected = ref.members(parse_segment(definition), NOW, ZoneInfo(tz))
            assert members(store, definition, tz) == expected, (tz, definition)


def random_filter(rng: random.Random, profile: bool) -> dict[str, Any]:
    name = rng.choice(["Age", "City", "Premium", "Signup", "Score", "Nope"] if profile else
                      ["Amount", "Category", "Gift", "Nope"])
    op = rng.choice(["eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "contains", "exists",
                     "not_exists", "before", "after"])
    key = "profile" if profile else "property"
    if op in ("exists", "not_exists"):
        return {key: name, "op": op}
    if op in ("gt", "gte", "lt", "lte"):
        return {key: name, "op": op, "value": rng.choice([0, 10, 30.5, 100, 250])}
    if op == "between":
        low = rng.randrange(0, 200)
        return {key: name, "op": op, "value": [low, low + rng.randrange(0, 200)]}
    if op in ("before", "after"):
        return {key: name, "op": op, "value": rng.choice(["30d", "2026-06-01", 1_780_000_000])}
    pool = [*CATEGORIES, *CITIES, True, False, 30, 199.5, 0]
    if op in ("in", "not_in"):
        return {key: name, "op": op, "value": rng.sample(pool, 3)}
    if op == "contains":
        return {key: name, "op": op, "value": rng.choice(["o", "S", "ari", "zz"])}
    return {key: name, "op": op, "value": rng.choice(pool)}


def random_window(rng: random.Random) -> Any:
    return rng.choice(["1d", "7d", "30d", {"from": "25d", "to": "5d"}, {"from": "2026-09-01"},
                       {"to": 20260910}, {"from": 1_788_000_000, "to": "2026-09-20T00:00:00+05:30"}])


def random_condition(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    roll = rng.random()
    if depth < 3 and roll < 0.25:
        kind = rng.choice(["all", "any", "not"])
        if kind == "not":
            return {"not": random_condition(rng, depth + 1)}
        return {kind: [random_condition(rng, depth + 1) for _ in range(rng.randrange(1, 4))]}
    if roll < 0.45:
        return random_filter(rng, profile=True)
    event = rng.choice(EVENTS)
    where = [random_filter(rng, profile=False) for _ in range(rng.choice([0, 0, 1, 1, 2]))]
    if roll < 0.8:
        cond: dict[str, Any] = {rng.choice(["did", "did", "did_not"]): event, "where": where}
        if rng.random() < 0.7:
            cond["within"] = random_window(rng)
        metric = rng.choice(["plain", "count", "sum", "avg", "min", "max"])
        if metric == "count":
            cond["count"] = {"op": rng.choice(["eq", "gte", "lt", "ne"]), "value": rng.randrange(0, 4)}
        elif metric != "plain":
            cond[metric] = "Amount"
            cond["op"], cond["value"] = rng.choice([("gte", 100), ("lt", 50), ("between", [20, 300]), ("eq", 0)])
        return cond
    if roll < 0.9:
        return {rng.choice(["first_time", "last_time"]): event, "where": where, "within": random_window(rng)}
    steps = [{"event": rng.choice(EVENTS), "where": where[:1]} for _ in range(rng.randrange(2, 4))]
    cond = {"sequence": steps, "gap": rng.choice(["30m", "6h", "2d", "2w"])}
    if rng.random() < 0.5:
        cond["within"] = random_window(rng)
    return cond


@pytest.mark.parametrize("seed", [11, 12])
def test_random_conditions_match_the_reference(seed: int) -> None:
    store, ref = build(seed)
    rng = random.Random(seed)
    for _ in range(400):
        definition = random_condition(rng)
        tz = rng.choice(ZONES)
        expected = ref.members(parse_segment(definition), NOW, ZoneInfo(tz))
        assert members(store, definition, tz) == expected, (tz, definition)


def test_scoped_evaluation_agrees_for_the_users_in_scope() -> None:
    """Live segments re-evaluate only the users a batch touched: the scoped answer for
    those users must be the full answer."""
    store, _ = build(5)
    rng = random.Random(5)
    for _ in range(300):
        definition = parse_segment(random_condition(rng))
        tz = ZoneInfo(rng.choice(ZONES))
        scope = np.asarray(sorted(rng.sample(range(store.user_count), 15)), dtype=np.int64)
        full = StoreQuery(store, NOW, tz).users(definition)
        scoped = StoreQuery(store, NOW, tz, only_users=scope).users(definition)
        assert (full[scope] == scoped[scope]).all(), definition


def test_sequences_over_the_whole_range_of_upload_times() -> None:
    """Events from 1970 to the last second uploads accept, across many users: the
    sequence's keys stay small (times by rank), so the answer is still exact."""
    store = AccountStore(ValueCodec(StringTable()))
    last = 99_999_999_999_000
    for i in range(3000):
        user = f"identity:{i}"
        store.apply_events([EventRecord(user, 0, "A", {}), EventRecord(user, last - 100_000, "A", {}),
                            EventRecord(user, last - (i % 3) * 1000, "B", {})])
    definition = {"sequence": ["A", "B"], "gap": "2m"}
    got = StoreQuery(store, last, ZoneInfo("UTC")).users(parse_segment(definition))
    assert got.all()  # every user's B is 98-100 s after their second A
    tight = StoreQuery(store, last, ZoneInfo("UTC")).users(parse_segment({**definition, "gap": "1m"}))
    assert not tight.any()
    backwards = StoreQuery(store, last, ZoneInfo("UTC")).users(parse_segment({"sequence": ["B", "A"], "gap": "30m"}))
    assert not backwards.any()  # no A ever follows a B


def test_long_histories_are_found_by_a_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_CHAIN_STEPS events a touched user's rows come from a scan: same rows."""
    from kairos.segments import evaluate

    store, _ = build(6)
    users = np.asarray([0, 3, 5, 8], dtype=np.int64)
    walked = evaluate.user_rows(store, users)
    monkeypatch.setattr(evaluate, "MAX_CHAIN_STEPS", 3)
    scanned = evaluate.user_rows(store, users)
    assert walked.size > 12 and np.array_equal(walked, scanned)
