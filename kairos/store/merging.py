"""Merging users within a store, and splitting a merged user back apart.

A merge moves a user in two log entries (see kairos.merge): `seal` hides the user on
its own shard, `absorb` adds what it held to the survivor. The survivor remembers what
each merged-in user brought (its identifiers, its properties at the time, and spans of
the survivor's rows holding its events) so that `split` can undo the merge.

What a split cannot give back: events recorded after the merge, and property writes
made after it, belong to the merged profile; they stay with the part that keeps the
surviving user's own identifiers. Each split-off part gets back the properties it had
when it was merged.
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec

import numpy as np

from kairos.models import Constituent, EventRecord, UserExport
from kairos.store import spans
from kairos.store.account_store import NEVER, AccountStore

# The key, in `split`'s answer, of the part that keeps the surviving user's identifiers.
REMAINDER = ""


def seal(store: AccountStore, key: str, into: str) -> None:
    """`key` was merged into `into`: hide it from lookups and scans. Its rows stay where
    they are (columns are append-only), skipped by every scan; `export` reads them, as
    often as a repeated merge asks."""
    store.sealed[key] = into
    user = store.user_index.get(key)
    if user is not None:
        store.live.values[user] = False


def _rows(store: AccountStore, user: int) -> np.ndarray:
    return np.asarray(store.user_event_rows(user)[::-1], dtype=np.int64)


def _events(raw: list[dict[str, Any]], identifier: str) -> list[EventRecord]:
    """Events read by `raw_events`, each named by `identifier`: one the receiving user
    will have anyway, so the events add no identifier to it."""
    return [EventRecord(identifier, e["ts_ms"], e["name"], e["props"]) for e in raw]


def _stamps(store: AccountStore, user: int, props: dict[str, Any]) -> dict[str, int]:
    code = store.codec.strings.code
    return {name: store.profile[code(name)].stamp(user) for name in props}


def export(
    store: AccountStore, keys: list[str], message_ids: Callable[[str], dict[int, str]] = lambda _: {},
) -> list[UserExport]:
    """Everything each of `keys` holds here, events oldest row first, each with its
    `messageId` (`message_ids(key)` maps rows to them); the other remembered ids and the
    users it absorbed are the partition's to add. The events of all of them are read in
    one pass over the property columns: a pass costs about the same for one user as for
    hundreds."""
    users = [store.user_index.get(key) for key in keys]
    rows = [_rows(store, user) if user is not None else np.empty(0, np.int64) for user in users]
    everything = np.concatenate(rows) if rows else np.empty(0, np.int64)
    order = np.argsort(everything, kind="stable")
    raw = store.raw_events(everything[order])
    events: list[Any] = [None] * everything.size
    for position, event in zip(order.tolist(), raw):
        events[position] = event
    out: list[UserExport] = []
    at = 0
    for key, user, user_rows in zip(keys, users, rows):
        mine, at = events[at : at + user_rows.size], at + user_rows.size
        if user is None:
            out.append(UserExport(key, [], [], {}, {}, NEVER, -NEVER, [], []))
            continue
        identifier = store.primary[user]
        ids_at = message_ids(key)
        props = store.profile_properties(user)
        parts = [
            Constituent(c.source, c.identifiers, c.props, c.prop_ts, spans.rows_to_positions(c.spans, user_rows))
            for c in store.constituents.get(user, ())
        ]
        out.append(UserExport(
            key, store.identifiers(user),
            [EventRecord(identifier, e["ts_ms"], e["name"], e["props"], ids_at.get(row))
             for e, row in zip(mine, user_rows.tolist())],
            props, _stamps(store, user, props), int(store.first_seen.values[user]), int(store.last_seen.values[user]),
            [], [], parts,
        ))
    return out


def absorb(store: AccountStore, items: list[tuple[str, UserExport]]) -> list[tuple[str, UserExport, int]]:
    """Merge sealed users' exports into their survivors: the events join the survivors'
    histories (all items' events in one append) and each property keeps the value with
    the later write time. Returns the items applied, each with the row its first event
    landed at: a source absorbed before is skipped, so a repeated merge changes nothing."""
    applied: list[tuple[str, UserExport]] = []
    for key, data in items:
        if data.source not in store.absorbed_sources:
            store.absorbed_sources.add(data.source)
            applied.append((key, data))
    # A survivor new to this shard takes its first identifier from the export (none
    # when the merged-away user had no records yet: the survivor's own first record names it).
    slots = [store.user_slot(key, data.identifiers[0] if data.identifiers else "") for key, data in applied]
    row0 = store.event_count
    store.apply_events(
        [event for _, data in applied for event in data.events],
        [key for key, data in applied for _ in data.events],
    )
    first, last = store.first_seen.values, store.last_seen.values
    done: list[tuple[str, UserExport, int]] = []
    for (key, data), user in zip(applied, slots):
        done.append((key, data, row0))
        for identifier in data.identifiers:
            store.add_identifier(user, identifier)
        first[user] = min(int(first[user]), data.first_seen)
        last[user] = max(int(last[user]), data.last_seen)
        store.set_properties(user, data.props, data.prop_ts, overwrite=False)
        sources = store.absorbed.setdefault(key, [])
        sources.append(data.source)
        for source in data.absorbed:
            if source not in store.absorbed_sources:
                store.absorbed_sources.add(source)
                sources.append(source)
        if not data.restores:
            _remember_constituents(store, user, data, row0)
        row0 += len(data.events)
    return done


def without_events(data: UserExport, kept: list[bool]) -> UserExport:
    """The export with only the events marked kept; constituents' spans follow."""
    mask = np.asarray(kept, dtype=bool)
    parts = [
        Constituent(c.source, c.identifiers, c.props, c.prop_ts, spans.keep(c.spans, mask))
        for c in data.constituents
    ]
    events = [event for event, keep in zip(data.events, kept) if keep]
    return msgspec.structs.replace(data, events=events, constituents=parts)


def _remember_constituents(store: AccountStore, user: int, data: UserExport, row0: int) -> None:
    """The source splits back into its own earlier constituents and what it held itself;
    its events are the rows [row0, row0 + len(events))."""
    nested = [
        Constituent(c.source, c.identifiers, c.props, c.prop_ts, spans.shift(c.spans, row0))
        for c in data.constituents
    ]
    taken = {i for c in nested for i in c.identifiers}
    own_spans = spans.complement([s for c in nested for s in c.spans], row0, row0 + len(data.events))
    own = Constituent(data.source, [i for i in data.identifiers if i not in taken], data.props, data.prop_ts, own_spans)
    store.constituents.setdefault(user, []).extend([*nested, own])


def constituents(store: AccountStore, key: str) -> list[tuple[str, list[str]]]:
    """The users merged into `key`, each with the identifiers it brought."""
    user = store.user_index.get(key)
    return [(c.source, c.identifiers) for c in store.constituents.get(user, ())] if user is not None else []


def split(store: AccountStore, key: str, message_ids: list[tuple[str, str]]) -> dict[str, UserExport]:
    """A (sealed) merged user cut back into its parts: one export per merged-in user
    (by its source id) and the remainder (`REMAINDER`), which holds every event and
    identifier no merged-in user brought, the current properties and the message ids.
    Each part carries a source id of its own, so absorbing it anywhere - even back into
    this store, which has absorbed the merged-in user before - happens exactly once."""
    user = store.user_index.get(key)
    if user is None:
        return {}
    rows = _rows(store, user)
    # One pass over the property columns for the whole user; each part takes its rows.
    raw = store.raw_events(rows)

    def raw_at(part_rows: np.ndarray) -> list[dict[str, Any]]:
        return [raw[p] for p in np.searchsorted(rows, part_rows).tolist()]

    parts: dict[str, UserExport] = {}
    claimed: list[tuple[int, int]] = []
    taken: set[str] = set()
    for c in store.constituents.get(user, ()):
        claimed.extend(c.spans)
        taken.update(c.identifiers)
        events = _events(raw_at(spans.take(rows, c.spans)), c.identifiers[0] if c.identifiers else "")
        stamps = [e.ts_ms for e in events] + list(c.prop_ts.values())
        parts[c.source] = UserExport(
            f"{key}/split/{c.source}", c.identifiers, events, c.props, c.prop_ts,
            min(stamps, default=NEVER), max(stamps, default=-NEVER), [], [], restores=True,
        )
    end = int(rows[-1]) + 1 if rows.size else 0
    rest = spans.take(rows, spans.complement(claimed, 0, end))
    props = store.profile_properties(user)
    kept = [i for i in store.identifiers(user) if i not in taken]
    events = _events(raw_at(rest), kept[0] if kept else "")
    stamps = [e.ts_ms for e in events] + list(_stamps(store, user, props).values())
    parts[REMAINDER] = UserExport(
        f"{key}/split/", kept, events, props,
        _stamps(store, user, props), min(stamps, default=NEVER), max(stamps, default=-NEVER), message_ids, [],
        restores=True,
    )
    return parts
