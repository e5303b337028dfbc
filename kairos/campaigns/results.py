"""A campaign's results per variant: what its schedulers queued, what the routers did
with it, and what its users did after (kairos.analytics.campaign_results); each
variant's conversion rate with a 95% Wilson interval, and the winner once the
difference is significant (a two-sided two-proportion z-test at 5%).
"""

from __future__ import annotations

import math
from typing import Any

from kairos.campaigns.planning import CONTROL, SOURCE_KIND
from kairos.routing.delivery_store import source_counters

Z_95 = 1.959963984540054
SIGNIFICANCE = 0.05
# Router outcomes reported per variant, as the delivery counters name them.
ROUTER_FIGURES = {"sent": "sent", "failed": "failed", "capped": "dropped_capped", "stopped": "dropped_stopped",
                  "expired": "dropped_expired", "quiet_hours_dropped": "dropped_quiet_hours",
                  "no_profile": "dropped_no_profile", "unknown": "unknown"}


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sound at small counts and near 0 or 1,
    where the normal approximation is not."""
    if trials == 0:
        return 0.0, 0.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - spread), min(1.0, centre + spread)


def two_proportion_p_value(s1: int, n1: int, s2: int, n2: int) -> float:
    """Two-sided p-value that two conversion rates are the same (pooled z-test)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (s1 + s2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance == 0:
        return 1.0
    z = abs(s1 / n1 - s2 / n2) / math.sqrt(variance)
    return math.erfc(z / math.sqrt(2))


def router_field(campaign_id: int, variant: str, outcome: str) -> str:
    """The routers' counter (in the account's delivery stats) of one variant's outcome."""
    return source_counters(SOURCE_KIND, str(campaign_id), variant, outcome)[-1]


def router_fields(campaign_id: int, variants: list[str]) -> list[str]:
    return [router_field(campaign_id, v, outcome) for v in variants for outcome in ROUTER_FIGURES.values()]


def variant_results(campaign_id: int, variants: list[str], has_control: bool, counters: dict[str, int],
                    delivery: dict[str, int], engagement: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The per-variant table and the winner. `counters`: the campaign's own (queued per
    variant, control); `delivery`: the routers' counters; `engagement`: users exposed,
    delivered, viewed, clicked and converted per variant."""
    names = list(variants) + ([CONTROL] if has_control else [])
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        users = engagement.get(name, {})
        row: dict[str, Any] = {"queued": counters.get("control" if name == CONTROL else f"queued|{name}", 0)}
        if name != CONTROL:
            for figure, outcome in ROUTER_FIGURES.items():
                row[figure] = delivery.get(router_field(campaign_id, name, outcome), 0)
        for figure in ("exposed", "delivered", "viewed", "clicked", "converted"):
            row[figure] = users.get(figure, 0)
        low, high = wilson_interval(row["converted"], row["exposed"])
        row["conversion_rate"] = row["converted"] / row["exposed"] if row["exposed"] else 0.0
        row["conversion_rate_ci95"] = [low, high]
        table[name] = row
    return {"variants": table, **_winner(table)}


def _winner(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The group whose rate beats every other group's significantly; None until one does."""
    groups = [name for name, row in table.items() if row["exposed"] > 0]
    if len(groups) < 2:
        return {"winner": None, "leader": groups[0] if groups else None, "p_values": {}}
    best = max(groups, key=lambda name: table[name]["conversion_rate"])
    p_values = {other: two_proportion_p_value(table[best]["converted"], table[best]["exposed"],
                                              table[other]["converted"], table[other]["exposed"])
                for other in groups if other != best}
    beaten = all(p < SIGNIFICANCE and table[best]["conversion_rate"] > table[other]["conversion_rate"]
                 for other, p in p_values.items())
    return {"winner": best if beaten else None, "leader": best, "p_values": p_values}
