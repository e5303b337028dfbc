"""The columnar store: events and profiles in, queries out, across chunks and snapshots."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec
import numpy as np
import pytest

from kairos.models import EventRecord, LogBatch, ProfileRecord, SealEntry
from kairos.store.account_store import AccountStore
from kairos.store.columns import CHUNK_ROWS, ChunkedArray, StringTable, ValueCodec
from kairos.segments import downloads
from kairos.segments.downloads import ExportQuery
from kairos.store.partition import ManifestEncoder, PartitionState


def log_batch(account: str, records: list) -> LogBatch:
    """A log entry whose users are the records' own identifiers (no merges involved)."""
    return LogBatch(account, [r.user for r in records], records)

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
ALL_TIME = (0, 1 << 62)


def new_store() -> AccountStore:
    return AccountStore(ValueCodec(StringTable()))


def ev(user: str, ts_ms: int, name: str = "Charged", props: dict[str, Any] | None = None,
       message_id: str | None = None) -> EventRecord:
    return EventRecord(user, ts_ms, name, props or {}, message_id)


def all_rows(store: AccountStore) -> np.ndarray:
    return np.arange(store.event_count, dtype=np.int64)


def clevertap_ts(ms: int) -> int:
    return int(datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y%m%d%H%M%S"))


# --- events ------------------------------------------------------------------------

VALUES = {
    "int": 7,
    "negative": -12,
    "zero": 0,
    "big int": 2**60,
    "negative big int": -(2**60),
    "float": 19.99,
    "whole float": 3.0,
    "str": "Blue shirt",
    "empty str": "",
    "unicode": "caf\u00e9 \u20ac",
    "true": True,
    "false": False,
    "none": None,
    "list": [1, "two", 3.5, None, [True]],
    "dict": {"sku": "A-1", "qty": 2, "tags": ["x"], "nested": {"ok": False}},
    "empty list": [],
    "empty dict": {},
}


def test_event_props_round_trip_with_types() -> None:
    store = new_store()
    store.apply_events([ev("identity:42", T0, "Charged", VALUES), ev("identity:43", T0 + 1, "Charged", {"int": 1})])
    records = store.event_records(all_rows(store))
    assert records[0] == {"profile": {"identity": "42"}, "ts": clevertap_ts(T0), "event_props": VALUES}
    for key, value in VALUES.items():
        got = records[0]["event_props"][key]
        assert type(got) is type(value), key
    assert records[1] == {"profile": {"identity": "43"}, "ts": clevertap_ts(T0 + 1), "event_props": {"int": 1}}
    assert records[0]["ts"] == 20231114221320


def test_event_records_for_a_subset_of_rows_in_any_order() -> None:
    store = new_store()
    store.apply_events([ev(f"identity:{i}", T0 + i, "E", {"i": i, **({"odd": True} if i % 2 else {})})
                        for i in range(20)])
    rows = np.array([17, 3, 10, 0], dtype=np.int64)
    records = store.event_records(rows)
    assert [r["profile"] for r in records] == [{"identity": str(i)} for i in (17, 3, 10, 0)]
    assert [r["event_props"] for r in records] == [
        {"i": 17, "odd": True}, {"i": 3, "odd": True}, {"i": 10}, {"i": 0},
    ]


def test_event_with_no_props() -> None:
    store = new_store()
    store.apply_events([ev("objectId:o1", T0, "Opened", {})])
    assert store.event_records(all_rows(store)) == [
        {"profile": {"objectId": "o1"}, "ts": clevertap_ts(T0), "event_props": {}}
    ]


def test_user_history_newest_first_across_batches() -> None:
    store = new_store()
    store.apply_events([ev("identity:a", T0), ev("identity:b", T0 + 1), ev("identity:a", T0 + 2, "Viewed")])
    store.apply_events([ev("identity:b", T0 + 3), ev("identity:a", T0 + 4)])
    a, b = store.find_user("identity:a"), store.find_user("identity:b")
    assert store.user_event_rows(a) == [4, 2, 0]
    assert store.user_event_rows(b) == [3, 1]
    assert store.find_user("identity:nobody") is None
    assert store.user_count == 2
    assert store.event_count == 5


def test_event_summary_counts_and_first_last_seen_in_seconds() -> None:
    store = new_store()
    store.apply_events([
        ev("identity:a", T0 + 5_000, "Charged"),
        ev("identity:a", T0 + 1_000, "Charged"),  # out of order: first seen is still the minimum
        ev("identity:a", T0 + 9_000, "Charged"),
        ev("identity:a", T0 + 2_000, "Viewed"),
        ev("identity:b", T0, "Viewed"),
    ])
    user = store.find_user("identity:a")
    assert store.event_summary(user) == {
        "Charged": {"count": 3, "first_seen": T0 // 1000 + 1, "last_seen": T0 // 1000 + 9},
        "Viewed": {"count": 1, "first_seen": T0 // 1000 + 2, "last_seen": T0 // 1000 + 2},
    }
    record = store.profile_record(user)
    assert record["first_seen"] == T0 // 1000 + 1
    assert record["last_seen"] == T0 // 1000 + 9


def test_user_with_only_a_profile_has_empty_history() -> None:
    store = new_store()
    store.apply_profile(ProfileRecord("identity:p", T0, {"Name": "P"}))
    user = store.find_user("identity:p")
    assert store.user_event_rows(user) == []
    assert store.event_summary(user) == {}


# --- profiles ----------------------------------------------------------------------


def test_profile_latest_write_wins_and_merges_keys() -> None:
    store = new_store()
    store.apply_profile(ProfileRecord("identity:42", T0, {"Name": "Ada", "Email": "ada@old.com", "Score": 1}))
    store.apply_profile(ProfileRecord("identity:42", T0 + 1000, {"Email": "ada@new.com", "Score": 2.5}))
    store.apply_profile(ProfileRecord("identity:42", T0 + 2000, {"Score": "high", "Tags": ["a", "b"]}))
    user = store.find_user("identity:42")
    assert store.profile_properties(user) == {
        "Name": "Ada", "Email": "ada@new.com", "Score": "high", "Tags": ["a", "b"],
    }


def test_profile_writes_apply_in_log_order_not_ts_order() -> None:
    store = new_store()
    store.apply_profile(ProfileRecord("identity:42", T0 + 5000, {"City": "Pune"}))
    store.apply_profile(ProfileRecord("identity:42", T0, {"City": "Goa"}))
    assert store.profile_properties(store.find_user("identity:42")) == {"City": "Goa"}


def test_a_conditional_unset_clears_only_the_value_it_names() -> None:
    store = new_store()
    store.apply_profile(ProfileRecord("identity:7", T0, {"Push Token": "old", "Name": "Bo"}))
    store.apply_profile(ProfileRecord("identity:8", T0, {"Push Token": "old"}))
    store.apply_profile(ProfileRecord("identity:8", T0 + 1, {"Push Token": "new"}))  # the app sent a fresh one
    for user in ("identity:7", "identity:8", "identity:9"):
        store.apply_profile(ProfileRecord(user, T0 + 2, {}, None, None, unset_if={"Push Token": "old"}))
    assert store.profile_properties(store.find_user("identity:7")) == {"Push Token": None, "Name": "Bo"}
    assert store.profile_properties(store.find_user("identity:8")) == {"Push Token": "new"}
    assert "Push Token" not in store.profile_properties(store.find_user("identity:9"))


def test_profile_record_shape() -> None:
    store = new_store()
    store.apply_events([ev("identity:42", T0 + 3000, "Charged")])
    store.apply_profile(ProfileRecord(
        "identity:42", T0, {"Name": "Ada", "Email": "ada@example.com", "Age": 36}, {"objectId": "o-42"},
    ))
    record = store.profile_record(store.find_user("identity:42"))
    assert record == {
        "identity": "42",
        "objectId": "o-42",
        "email": "ada@example.com",
        "name": "Ada",
        "identities": {"identity": ["42"], "objectId": ["o-42"], "Email": ["ada@example.com"]},
        "profileData": {"Name": "Ada", "Email": "ada@example.com", "Age": 36},
        "events": {"Charged": {"count": 1, "first_seen": T0 // 1000 + 3, "last_seen": T0 // 1000 + 3}},
        "first_seen": T0 // 1000,
        "last_seen": T0 // 1000 + 3,
    }


def test_profiles_of_different_users_do_not_leak() -> None:
    store = new_store()
    store.apply_profile(ProfileRecord("identity:1", T0, {"A": 1}))
    store.apply_events([ev(f"identity:{i}", T0) for i in range(2, 400)])  # grows user columns
    store.apply_profile(ProfileRecord("identity:399", T0, {"B": "b"}))
    assert store.profile_properties(store.find_user("identity:1")) == {"A": 1}
    assert store.profile_properties(store.find_user("identity:2")) == {}
    assert store.profile_properties(store.find_user("identity:399")) == {"B": "b"}


def test_users_with_property() -> None:
    store = new_store()
    store.apply_profile(ProfileRecord("identity:1", T0, {"Email": "a@x.com", "Plan": "gold"}))
    store.apply_profile(ProfileRecord("identity:2", T0, {"Email": "b@x.com", "Plan": "gold"}))
    store.apply_profile(ProfileRecord("identity:3", T0, {"Email": "c@x.com", "Plan": "free"}))
    store.apply_events([ev("identity:4", T0, "Charged", {"Plan": "gold"})])  # event props are not profile
    ids = lambda users: sorted(store.user_keys[u] for u in users)  # noqa: E731
    assert ids(store.users_with_property("Email", "b@x.com")) == ["identity:2"]
    assert ids(store.users_with_property("Plan", "gold")) == ["identity:1", "identity:2"]
    assert store.users_with_property("Email", "nobody@x.com") == []
    assert store.users_with_property("Missing", "gold") == []
    # A value that exists elsewhere (as another key's value) does not match.
    assert store.users_with_property("Email", "gold") == []
    # Changing the value moves the user.
    store.apply_profile(ProfileRecord("identity:1", T0 + 1, {"Email": "a2@x.com"}))
    assert store.users_with_property("Email", "a@x.com") == []
    assert ids(store.users_with_property("Email", "a2@x.com")) == ["identity:1"]


# --- event queries -------------------------------------------------------------------


def test_count_events_time_bounds_from_inclusive_to_exclusive() -> None:
    store = new_store()
    store.apply_events([
        ev("identity:1", 1000, "Charged"),
        ev("identity:2", 2000, "Charged"),
        ev("identity:1", 2999, "Charged"),
        ev("identity:3", 3000, "Charged"),
        ev("identity:3", 2000, "Viewed"),
    ])
    assert store.count_events("Charged", 1000, 3000) == 3
    assert store.count_events("Charged", 1001, 3000) == 2
    assert store.count_events("Charged", 1000, 3001) == 4
    assert store.count_events("Charged", 2000, 2000) == 0
    assert store.count_events("Viewed", *ALL_TIME) == 1
    assert store.count_events("Never", *ALL_TIME) == 0
    rows = np.concatenate(list(store.match_events("Charged", 1000, 3000)))
    assert rows.tolist() == [0, 1, 2]


def test_match_events_from_start_row() -> None:
    store = new_store()
    store.apply_events([ev("identity:1", T0 + i, "E" if i % 3 else "F") for i in range(30)])
    rows = np.concatenate(list(store.match_events("E", *ALL_TIME, start_row=10)))
    assert rows.tolist() == [i for i in range(10, 30) if i % 3]


def test_event_name_that_is_only_a_property_value_matches_nothing() -> None:
    store = new_store()
    store.apply_events([ev("identity:1", T0, "Charged", {"kind": "Viewed"})])
    assert store.count_events("Viewed", *ALL_TIME) == 0


# --- ChunkedArray ----------------------------------------------------------------------


def test_chunked_array_across_chunk_boundaries() -> None:
    n = 3 * CHUNK_ROWS + 1234
    data = np.arange(n, dtype=np.int64) * 3 - 7
    column = ChunkedArray(np.int64)
    # Uneven pieces that straddle chunk borders.
    for start, stop in [(0, 100), (100, CHUNK_ROWS - 1), (CHUNK_ROWS - 1, CHUNK_ROWS + 1), (CHUNK_ROWS + 1, n)]:
        column.extend(data[start:stop])
    assert len(column) == n
    for row in (0, CHUNK_ROWS - 1, CHUNK_ROWS, 2 * CHUNK_ROWS, 3 * CHUNK_ROWS, n - 1):
        assert column[row] == data[row]
    with pytest.raises(IndexError):
        column[n]
    assert np.array_equal(column.to_numpy(), data)

    rng = np.random.default_rng(7)
    rows = rng.integers(0, n, 5000)
    assert np.array_equal(column.take(rows), data[rows])
    assert np.array_equal(column.take(np.array([n - 1, 0, CHUNK_ROWS], dtype=np.int64)),
                          data[[n - 1, 0, CHUNK_ROWS]])
    assert column.take(np.empty(0, np.int64)).size == 0

    chunks = list(column.chunks())
    assert [offset for offset, _ in chunks] == [0, CHUNK_ROWS, 2 * CHUNK_ROWS, 3 * CHUNK_ROWS]
    assert np.array_equal(np.concatenate([c for _, c in chunks]), data)
    for offset, chunk in chunks:
        assert np.array_equal(chunk, data[offset: offset + chunk.size])

    later = list(column.chunks(2 * CHUNK_ROWS + 5))
    assert [offset for offset, _ in later] == [2 * CHUNK_ROWS, 3 * CHUNK_ROWS]
    assert list(column.chunks(n + CHUNK_ROWS)) == []

    # Memory held stays close to the data.
    assert data.nbytes <= column.nbytes <= data.nbytes * 1.05


def test_chunked_array_exactly_full_chunk() -> None:
    column = ChunkedArray(np.int32)
    column.extend(np.arange(CHUNK_ROWS, dtype=np.int32))
    assert len(column) == CHUNK_ROWS
    assert column[CHUNK_ROWS - 1] == CHUNK_ROWS - 1
    assert [o for o, _ in column.chunks()] == [0]
    assert list(column.chunks(CHUNK_ROWS)) == []
    column.extend([-1])
    assert len(column) == CHUNK_ROWS + 1
    assert column[CHUNK_ROWS] == -1
    assert [(o, c.size) for o, c in column.chunks(CHUNK_ROWS)] == [(CHUNK_ROWS, 1)]
    assert column.take(np.array([CHUNK_ROWS, 5])).tolist() == [-1, 5]


def test_chunked_array_empty_and_from_numpy() -> None:
    empty = ChunkedArray(np.float64)
    assert len(empty) == 0
    assert list(empty.chunks()) == []
    assert empty.to_numpy().size == 0
    data = np.linspace(0, 1, CHUNK_ROWS + 10)
    column = ChunkedArray(data.dtype)
    column.extend(data)
    assert column.dtype == np.float64
    assert np.array_equal(column.to_numpy(), data)


# --- a realistic partition: 200k events, queries over several chunks, memory -----------

N_EVENTS = 200_000
N_USERS = 2_000
PRODUCTS = [f"Product {i:02d}" for i in range(50)]
CATEGORIES = [f"Category {i}" for i in range(10)]


@pytest.fixture(scope="module")
def big() -> dict[str, Any]:
    rng = np.random.default_rng(2024)
    users = rng.integers(0, N_USERS, N_EVENTS)
    products = rng.integers(0, len(PRODUCTS), N_EVENTS)
    categories = rng.integers(0, len(CATEGORIES), N_EVENTS)
    prices = np.round(rng.random(N_EVENTS) * 1000, 2)
    names = np.where(rng.random(N_EVENTS) < 0.25, 1, 0)  # 0: Product Viewed, 1: Added To Cart
    stamps = T0 + np.arange(N_EVENTS, dtype=np.int64) * 1000
    event_names = ["Product Viewed", "Added To Cart"]
    state = PartitionState(0, dedupe_window=1000)
    batch = 5000
    for start in range(0, N_EVENTS, batch):
        records = [
            EventRecord(
                f"identity:{u}", ts, event_names[n],
                {"Product name": PRODUCTS[p], "Category": CATEGORIES[c], "Price": price},
            )
            for u, ts, n, p, c, price in zip(
                users[start:start + batch].tolist(), stamps[start:start + batch].tolist(),
                names[start:start + batch].tolist(), products[start:start + batch].tolist(),
                categories[start:start + batch].tolist(), prices[start:start + batch].tolist(),
            )
        ]
        state.apply(f"batch-{start}", f"{start + 1}-0", log_batch("acct", records))
    return {
        "state": state, "users": users, "products": products, "categories": categories,
        "prices": prices, "names": names, "stamps": stamps,
    }


def test_memory_per_event_is_at_most_64_bytes(big: dict[str, Any]) -> None:
    memory = big["state"].memory()
    assert memory["events"] == N_EVENTS
    assert memory["users"] == N_USERS
    total = memory["event_bytes"] + memory["profile_bytes"] + memory["dictionary_bytes"]
    assert total / N_EVENTS <= 64, (total / N_EVENTS, memory)
    assert memory["event_bytes"] > 0 and memory["dictionary_bytes"] > 0


def test_big_counts_match_numpy(big: dict[str, Any]) -> None:
    store = big["state"].account("acct")
    stamps, names = big["stamps"], big["names"]
    assert store.event_count == N_EVENTS
    lo, hi = int(stamps[30_000]), int(stamps[170_000])  # spans chunk borders at 65536 and 131072
    expected = int(((names == 1) & (stamps >= lo) & (stamps < hi)).sum())
    assert store.count_events("Added To Cart", lo, hi) == expected
    assert store.count_events("Product Viewed", *ALL_TIME) == int((names == 0).sum())
    rows = np.concatenate(list(store.match_events("Added To Cart", lo, hi)))
    assert np.array_equal(rows, np.flatnonzero((names == 1) & (stamps >= lo) & (stamps < hi)))
    users_in_range = np.unique(big["users"][(names == 1) & (stamps >= lo) & (stamps < hi)])
    user_index = np.array([store.find_user(f"identity:{u}") for u in users_in_range])
    with_event = downloads.count_profiles([big["state"]], "acct", ExportQuery("Added To Cart", lo, hi))
    assert with_event == user_index.size
    page, _ = downloads.export_profiles(big["state"], "acct", ExportQuery("Added To Cart", lo, hi), 0, 10**6)
    assert sorted(p["identity"] for p in page) == sorted(f"{u}" for u in users_in_range)


def test_big_match_events_resumes_from_a_row_in_a_later_chunk(big: dict[str, Any]) -> None:
    store = big["state"].account("acct")
    names = big["names"]
    start = CHUNK_ROWS + 17
    rows = np.concatenate(list(store.match_events("Added To Cart", *ALL_TIME, start_row=start)))
    expected = np.flatnonzero(names == 1)
    assert np.array_equal(rows, expected[expected >= start])


def test_big_event_records_across_chunks(big: dict[str, Any]) -> None:
    store = big["state"].account("acct")
    rows = np.array([0, CHUNK_ROWS - 1, CHUNK_ROWS, 2 * CHUNK_ROWS + 3, N_EVENTS - 1], dtype=np.int64)
    records = store.event_records(rows)
    for row, record in zip(rows.tolist(), records):
        assert record["profile"] == {"identity": str(big["users"][row])}
        assert record["ts"] == clevertap_ts(int(big["stamps"][row]))
        assert record["event_props"] == {
            "Product name": PRODUCTS[big["products"][row]],
            "Category": CATEGORIES[big["categories"][row]],
            "Price": float(big["prices"][row]),
        }


def test_big_user_history_walks_every_chunk(big: dict[str, Any]) -> None:
    store = big["state"].account("acct")
    users, names, stamps = big["users"], big["names"], big["stamps"]
    for u in (0, 1234, N_USERS - 1):
        expected = np.flatnonzero(users == u)[::-1].tolist()
        assert store.user_event_rows(store.find_user(f"identity:{u}")) == expected
        mine = users == u
        summary = store.event_summary(store.find_user(f"identity:{u}"))
        for code, name in enumerate(["Product Viewed", "Added To Cart"]):
            ts = stamps[mine & (names == code)]
            assert summary[name] == {
                "count": int(ts.size), "first_seen": int(ts.min()) // 1000, "last_seen": int(ts.max()) // 1000,
            }


# --- snapshot round trip ------------------------------------------------------------------


def query_fingerprint(state: PartitionState) -> dict[str, Any]:
    out: dict[str, Any] = {"partition": state.partition, "last_log_id": state.last_log_id}
    for account, store in sorted(state.accounts.items()):
        names = sorted({store.codec.strings.values[c] for c in np.unique(store.ev_name.to_numpy()).tolist()})
        out[account] = {
            "users": store.user_count,
            "events": store.event_count,
            "profiles": {key: store.profile_record(store.find_user(key)) for key in store.user_keys},
            "counts": {name: store.count_events(name, *ALL_TIME) for name in names},
            "records": store.event_records(all_rows(store)),
            "history": {key: store.user_event_rows(store.find_user(key)) for key in store.user_keys},
        }
    return out


def rich_state() -> PartitionState:
    state = PartitionState(3, dedupe_window=100)
    state.apply("b1", "1-0", log_batch("acct-a", [
        ev("identity:1", T0, "Charged", VALUES),
        ProfileRecord("identity:1", T0, {"Name": "One", "Email": "one@x.com", "Meta": {"k": [1]}}, {"GPID": "g1"}),
        ev("objectId:o2", T0 + 5, "Viewed", {"Price": 2.5}, "m-1"),
    ]))
    state.apply("b2", "2-0", log_batch("acct-b", [
        ProfileRecord("identity:1", T0, {"Name": "Other account"}),
        ev("identity:1", T0 + 1, "Charged", {"list": [1, 2]}),
    ]))
    state.apply("b3", "3-0", log_batch("acct-a", [ev("identity:1", T0 + 9, "Charged", {"big": 2**62})]))
    return state


def test_snapshot_round_trip_gives_identical_queries() -> None:
    state = rich_state()
    restored = PartitionState.from_bytes(state.to_bytes(), dedupe_window=100)
    assert query_fingerprint(restored) == query_fingerprint(state)
    assert restored.memory()["events"] == state.memory()["events"] == 4
    assert restored.to_bytes() == state.to_bytes()


def test_a_snapshot_copy_encoded_after_more_writes_restores_the_state_at_the_copy() -> None:
    # The shard encodes a copy a field at a time while appends go on: nothing written
    # after the copy (new users, strings, profile changes, events, merges, message ids)
    # may reach the manifest, or a restart would apply those records twice.
    state, at_copy = rich_state(), rich_state()
    copy, chunks = state.snapshot_copy(persisted=set())
    state.apply("b4", "4-0", log_batch("acct-a", [
        ev("identity:1", T0 + 20, "Charged", {"Color": "Red"}, "m-2"),
        ProfileRecord("identity:1", T0 + 20, {"Name": "Changed", "New": "x"}, {"FBID": "f1"}),
        ev("identity:9", T0 + 21, "Signed Up", {"Plan": "new", "Tags": {"k": [2]}}),
    ]))
    state.apply("b5", "5-0", SealEntry("acct-a", ["identity:9"], ["identity:1"]))
    encoder = ManifestEncoder(copy)
    assert sum(1 for _ in encoder.steps()) > 1, "the encoding must leave the loop turns between its steps"
    restored = PartitionState.restore(encoder.manifest, chunks, dedupe_window=100)
    assert query_fingerprint(restored) == query_fingerprint(at_copy)
    assert restored.to_bytes() == at_copy.to_bytes()
    assert encoder.manifest == at_copy.snapshot(persisted=set())[0]


def test_a_manifest_written_before_the_notes_went_whole_still_restores() -> None:
    # Until 2026-11-24 a manifest held the ids of each window and, apart, the notes that
    # were set; data directories written then must still load.
    state = rich_state()
    state.apply("b4", "4-0", log_batch("acct-a", [ev("identity:1", T0 + 30, "Charged", {}, "m-3")]))
    manifest, chunks = state.snapshot(persisted=set())
    raw = msgspec.msgpack.decode(manifest)
    batch_notes, message_notes = raw.pop("batch_notes"), raw.pop("message_notes")
    assert any(note is not None for note in message_notes.values())
    raw.update(batch_ids=list(batch_notes), refusals={k: v for k, v in batch_notes.items() if v is not None},
               message_ids=list(message_notes), message_rows={k: v for k, v in message_notes.items() if v is not None})
    restored = PartitionState.restore(msgspec.msgpack.encode(raw), chunks, dedupe_window=100)
    assert restored.to_bytes() == state.to_bytes()


def test_restored_state_keeps_accepting_writes_like_the_original() -> None:
    original, restored = rich_state(), PartitionState.from_bytes(rich_state().to_bytes(), dedupe_window=100)
    more = [
        ("b4", "4-0", log_batch("acct-a", [
            ev("identity:1", T0 + 20, "Charged", {"Color": "Red", "n": None}),
            ev("identity:new", T0 + 21, "Viewed"),
            ProfileRecord("identity:1", T0 + 22, {"Email": "one@new.com"}),
            ProfileRecord("identity:new", T0 + 23, {"Fresh": True}),
        ])),
        ("b5", "5-0", log_batch("acct-c", [ev("identity:9", T0 + 30, "Opened")])),
    ]
    for state in (original, restored):
        for batch_id, log_id, batch in more:
            state.apply(batch_id, log_id, batch)
    assert query_fingerprint(restored) == query_fingerprint(original)


def test_big_snapshot_round_trip(big: dict[str, Any]) -> None:
    state = big["state"]
    restored = PartitionState.from_bytes(state.to_bytes(), dedupe_window=1000)
    a, b = state.account("acct"), restored.account("acct")
    assert b.event_count == N_EVENTS
    for name in ("Product Viewed", "Added To Cart"):
        assert b.count_events(name, T0 + 10_000_000, T0 + 150_000_000) == a.count_events(
            name, T0 + 10_000_000, T0 + 150_000_000)
    rows = np.array([5, CHUNK_ROWS + 5, N_EVENTS - 5], dtype=np.int64)
    assert b.event_records(rows) == a.event_records(rows)
    user = a.find_user("identity:77")
    assert b.profile_record(user) == a.profile_record(user)
    assert restored.memory()["events"] == N_EVENTS


def test_chunked_searchsorted_equals_numpy_across_chunks() -> None:
    data = np.arange(0, 3 * CHUNK_ROWS + 123, 3, dtype=np.int32)  # ascending, spans chunks
    column = ChunkedArray(np.int32)
    column.extend(data)
    probes = np.array([-5, 0, 1, 3, CHUNK_ROWS * 3 - 3, CHUNK_ROWS * 3, int(data[-1]), int(data[-1]) + 1], dtype=np.int64)
    assert np.array_equal(column.searchsorted(probes), np.searchsorted(data, probes))
    assert np.array_equal(ChunkedArray(np.int32).searchsorted(probes), np.zeros(probes.size, dtype=np.int64))
