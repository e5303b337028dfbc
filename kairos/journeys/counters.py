"""A journey's counters: how their names are made and read back. They live in one Redis
hash per journey (kairos.keys.journey_stats), moved by HINCRBY in each step's commit.

    v<version>|<outcome>                      entered, control_entered, completed, exited,
                                              converted, control_converted, moved_in,
                                              moved_out, goal_window (a gauge)
    v<version>|node|<node>|waiting            a gauge: users at the node now
    v<version>|node|<node>|reached            users who ran the node
    v<version>|node|<node>|sent|<variant>     messages sent there, per split variant ("-": none)
"""

from __future__ import annotations

from typing import NamedTuple

NO_VARIANT = "-"
# Every per-version counter that is not a node's, in the order the API shows them.
OUTCOMES = ("entered", "control_entered", "completed", "exited", "converted", "control_converted",
            "moved_in", "moved_out", "goal_window")


class Counter(NamedTuple):
    version: int
    what: str  # an outcome, or waiting / reached / sent for a node
    node: str | None = None
    variant: str | None = None


def outcome(version: int, what: str) -> str:
    return f"v{version}|{what}"


def at_node(version: int, node: str, what: str) -> str:
    return f"v{version}|node|{node}|{what}"


def sent(version: int, node: str, variant: str | None) -> str:
    return f"v{version}|node|{node}|sent|{variant or NO_VARIANT}"


def parse(name: str) -> Counter | None:
    """A counter's parts; None for a name not made here."""
    head, _, rest = name.partition("|")
    if not head.startswith("v") or not head[1:].isdigit():
        return None
    version = int(head[1:])
    if not rest.startswith("node|"):
        return Counter(version, rest)
    parts = rest.split("|")
    if len(parts) == 3 and parts[2] in ("waiting", "reached"):
        return Counter(version, parts[2], parts[1])
    if len(parts) == 4 and parts[2] == "sent":
        return Counter(version, "sent", parts[1], parts[3])
    return None


def users_on(counters: dict[str, int]) -> dict[int, int]:
    """Per version, the users on it now (waiting at a node or in the goal window)."""
    held: dict[int, int] = {}
    for name, value in counters.items():
        counter = parse(name)
        if counter is not None and counter.what in ("waiting", "goal_window"):
            held[counter.version] = held.get(counter.version, 0) + value
    return held
