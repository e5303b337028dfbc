"""The benchmark's events: CleverTap upload bodies of 500 events over 100,000 users."""

from __future__ import annotations

import random

import msgspec

EVENT_NAMES = ["Product Viewed", "Added To Cart", "Charged", "Searched", "Page Viewed"]
CATEGORIES = ["Mens Watch", "Womens Watch", "Shoes", "Bags", "Phones", "Laptops", "Books", "Toys", "Games", "Food"]
PRODUCTS = [f"Product {i:03d}" for i in range(200)]


def make_bodies(count: int, batch: int = 500, users: int = 100_000, seed: int = 7) -> list[bytes]:
    """`count` distinct request bodies; each event has three properties, like a typical
    e-commerce event (two dictionary strings and a price)."""
    rng = random.Random(seed)
    base_ts = 1_790_000_000
    bodies = []
    for _ in range(count):
        records = [
            {
                "identity": f"user-{rng.randrange(users)}",
                "type": "event",
                "ts": base_ts + rng.randrange(90 * 86400),
                "evtName": rng.choice(EVENT_NAMES),
                "evtData": {
                    "Product name": rng.choice(PRODUCTS),
                    "Category": rng.choice(CATEGORIES),
                    "Price": round(rng.uniform(1, 500), 2),
                },
            }
            for _ in range(batch)
        ]
        bodies.append(msgspec.json.encode({"d": records}))
    return bodies
