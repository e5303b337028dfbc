"""The analytics benchmark's data: profiles and events as numpy columns from a seed, the
same columns as CleverTap upload bodies (for Kairos) and as DuckDB tables."""

from __future__ import annotations

from typing import Iterator

import msgspec
import numpy as np

END_S = 1_789_948_800  # 2026-09-21T00:00:00Z: the data's last day ends here
DAYS = 90
EVENT_NAMES = np.array(["Product Viewed", "Added To Cart", "Charged", "Searched", "Page Viewed"])
EVENT_SHARES = [0.45, 0.2, 0.1, 0.15, 0.1]
CATEGORIES = np.array(["Mens Watch", "Womens Watch", "Shoes", "Bags", "Phones", "Laptops", "Books", "Toys", "Games",
                       "Food"])
PRODUCTS = np.array([f"Product {i:03d}" for i in range(200)])
CITIES = np.array(["Pune", "Mumbai", "Delhi", "Bengaluru", "Chennai", "Kolkata", "Hyderabad", "Jaipur", "Paris",
                   "London", "Berlin", "Madrid", "Lisbon", "Rome", "Tokyo", "Seoul", "Lagos", "Cairo", "Lima", "Quito"])
GENDERS = np.array(["M", "F", "O"])


class Data(msgspec.Struct):
    users: int
    # profiles, by user number
    city: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    # events
    user: np.ndarray
    ts_s: np.ndarray
    name: np.ndarray
    category: np.ndarray
    product: np.ndarray
    amount: np.ndarray


def generate(users: int, events: int, seed: int = 4) -> Data:
    rng = np.random.default_rng(seed)
    return Data(
        users,
        rng.integers(0, CITIES.size, users).astype(np.int8),
        rng.integers(18, 80, users).astype(np.int16),
        rng.integers(0, GENDERS.size, users).astype(np.int8),
        rng.integers(0, users, events).astype(np.int32),
        (END_S - rng.integers(1, DAYS * 86_400, events)).astype(np.int64),
        rng.choice(EVENT_NAMES.size, events, p=EVENT_SHARES).astype(np.int8),
        rng.integers(0, CATEGORIES.size, events).astype(np.int8),
        rng.integers(0, PRODUCTS.size, events).astype(np.int16),
        rng.integers(1, 501, events).astype(np.int32),  # whole units: sums are exact in any order
    )


def profile_bodies(data: Data, batch: int = 500) -> Iterator[bytes]:
    for start in range(0, data.users, batch):
        stop = min(start + batch, data.users)
        yield msgspec.json.encode({"d": [
            {"type": "profile", "identity": f"u{u}", "ts": END_S - DAYS * 86_400,
             "profileData": {"City": city, "Age": age, "Gender": gender}}
            for u, city, age, gender in zip(range(start, stop), CITIES[data.city[start:stop]].tolist(),
                                            data.age[start:stop].tolist(), GENDERS[data.gender[start:stop]].tolist())
        ]})


def event_bodies(data: Data, batch: int = 500) -> Iterator[bytes]:
    for start in range(0, data.user.size, batch):
        s = slice(start, start + batch)
        yield msgspec.json.encode({"d": [
            {"type": "event", "identity": f"u{u}", "ts": ts, "evtName": name,
             "evtData": {"Category": category, "Product name": product, "Amount": amount}}
            for u, ts, name, category, product, amount in zip(
                data.user[s].tolist(), data.ts_s[s].tolist(), EVENT_NAMES[data.name[s]].tolist(),
                CATEGORIES[data.category[s]].tolist(), PRODUCTS[data.product[s]].tolist(), data.amount[s].tolist())
        ]})
