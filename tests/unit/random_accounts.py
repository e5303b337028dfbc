"""Random accounts for the engine tests: the same history into column stores (one per
partition) and into the plain-Python reference, merges across partitions included.
Times sit often exactly on window edges, so an off-by-one at an edge shows."""

from __future__ import annotations

import random
import zlib
from typing import Any

from kairos.models import EventRecord, ProfileRecord
from kairos.store import merging
from kairos.store.account_store import AccountStore
from kairos.store.columns import StringTable, ValueCodec
from tests.unit.segment_reference import RefAccount

DAY = 86_400_000
NOW = 1_789_948_800_000  # 2026-09-21T00:00:00Z
SLOT = 1_800_000  # events on a half-hour grid, so window edges and gaps are hit exactly
EVENTS = ["Charged", "Added To Cart", "App Launched", "Searched"]
CATEGORIES = ["Shoes", "Bags", "shoes", "Books", "Toys"]
CITIES = ["Paris", "Lyon", "Pune", "Mumbai", "Paris "]
ZONES = ["UTC", "Asia/Kolkata", "America/New_York", "Australia/Lord_Howe"]


def amount(rng: random.Random) -> Any:
    return rng.choice([rng.randrange(0, 400), rng.randrange(0, 800) / 2, "n/a", None, True])


def event_props(rng: random.Random) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if rng.random() < 0.85:
        props["Amount"] = amount(rng)
    if rng.random() < 0.8:
        props["Category"] = rng.choice(CATEGORIES)
    if rng.random() < 0.3:
        props["Gift"] = rng.random() < 0.5
    return props


def profile_props(rng: random.Random) -> dict[str, Any]:
    choices: dict[str, Any] = {
        "Age": rng.choice([rng.randrange(12, 80), rng.randrange(12, 80) + 0.5, "unknown", None]),
        "City": rng.choice(CITIES),
        "Premium": rng.random() < 0.4,
        "Signup": rng.choice([
            f"$D_{(NOW - rng.randrange(400) * DAY) // 1000}", (NOW - rng.randrange(400) * DAY) // 1000,
            f"2026-0{rng.randrange(1, 10)}-1{rng.randrange(10)}", "soon",
        ]),
        "Score": rng.randrange(0, 100) / 4,
    }
    return {k: v for k, v in choices.items() if rng.random() < 0.8}


# Midnights of ZONES' days, as offsets from UTC midnight: windows given as dates edge there.
MIDNIGHTS = [0, -int(5.5 * 3_600_000), 4 * 3_600_000, -int(10.5 * 3_600_000)]


def event_time(rng: random.Random) -> int:
    """Often exactly on a window's edge (whole days ago, a zone's midnight), else on a
    half-hour grid, sometimes a millisecond or so past it."""
    if rng.random() < 0.4:
        return NOW - rng.randrange(40) * DAY + rng.choice(MIDNIGHTS)
    return NOW - rng.randrange(40 * DAY // SLOT) * SLOT + rng.choice([0, 0, 0, 1, 999])


def build(seed: int, users: int = 80, records: int = 2500) -> tuple[AccountStore, RefAccount]:
    """One store holding every user."""
    stores, ref = build_partitioned(seed, 1, users, records)
    return stores[0], ref


def build_partitioned(seed: int, partitions: int, users: int = 80,
                      records: int = 2500) -> tuple[list[AccountStore], RefAccount]:
    """The users spread over `partitions` stores by a hash of their key, as the shards
    hold them; a merge moves the merged user's data to the survivor's store."""
    rng = random.Random(seed)
    stores = [AccountStore(ValueCodec(StringTable())) for _ in range(partitions)]
    ref = RefAccount()

    def store_of(key: str) -> AccountStore:
        return stores[zlib.crc32(key.encode()) % partitions]

    keys = [f"identity:u{i}" for i in range(users)]
    for _ in range(records):
        key = rng.choice([k for k in keys if k not in ref.merged])
        ts = event_time(rng)
        roll = rng.random()
        if roll < 0.1:
            props = profile_props(rng)
            store_of(key).apply_profile(ProfileRecord(key, ts, props))
            ref.profile(key, ts, props)
        elif roll < 0.994:
            name, props = rng.choice(EVENTS), event_props(rng)
            store_of(key).apply_events([EventRecord(key, ts, name, props)])
            ref.event(key, name, ts, props)
        else:
            alive = [k for k in keys if k not in ref.merged and k in ref.users and k != key]
            if not alive:
                continue
            source = rng.choice(alive)
            exported = merging.export(store_of(source), [source])[0]
            merging.seal(store_of(source), source, key)
            merging.absorb(store_of(key), [(key, exported)])
            ref.merge(source, key)
    return stores, ref
