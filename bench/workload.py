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


class IdentityWorkload:
    """Bodies of 500 CleverTap records in which 30% need the identity graph: per body,
    70% are events of known customers (resolved from the ingest cache), 15% events of
    devices never seen before (a Redis round trip that creates their user), and 15%
    logins (onUserLogin profiles) tying a device seen in an earlier body to a known
    customer, which merges the device's user into the customer's across shards.
    Identifiers are unique per `seed`, so concurrent clients never share devices."""

    def __init__(self, seed: int, customers: int = 100_000, new_devices: int = 75, logins: int = 75) -> None:
        self.new_devices = new_devices
        self.logins = logins
        self.rng = random.Random(seed)
        self.seed = seed
        self.customers = customers
        self.devices = 0
        self.unmerged: list[str] = []

    def body(self, batch: int = 500) -> bytes:
        rng, base_ts = self.rng, 1_790_000_000
        records: list[dict[str, object]] = []
        for _ in range(min(self.logins, len(self.unmerged))):
            device = self.unmerged.pop()
            records.append({"type": "profile", "identity": f"user-{rng.randrange(self.customers)}",
                            "objectId": device, "ts": base_ts, "profileData": {"Last Login Device": device}})
        for _ in range(self.new_devices):
            self.devices += 1
            device = f"dev-{self.seed}-{self.devices}"
            self.unmerged.insert(0, device)
            records.append(self._event({"objectId": device}, base_ts))
        while len(records) < batch:
            records.append(self._event({"identity": f"user-{rng.randrange(self.customers)}"}, base_ts))
        rng.shuffle(records)
        return msgspec.json.encode({"d": records})

    def _event(self, who: dict[str, str], base_ts: int) -> dict[str, object]:
        rng = self.rng
        return {**who, "type": "event", "ts": base_ts + rng.randrange(90 * 86400), "evtName": rng.choice(EVENT_NAMES),
                "evtData": {"Product name": rng.choice(PRODUCTS), "Category": rng.choice(CATEGORIES),
                            "Price": round(rng.uniform(1, 500), 2)}}


def customer_bodies(customers: int = 100_000, batch: int = 500) -> list[bytes]:
    """One profile per known customer, so every customer exists before a run."""
    return [
        msgspec.json.encode({"d": [
            {"type": "profile", "identity": f"user-{i}", "ts": 1_790_000_000, "profileData": {"Plan": "free"}}
            for i in range(start, min(start + batch, customers))
        ]})
        for start in range(0, customers, batch)
    ]
