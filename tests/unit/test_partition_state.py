"""PartitionState.apply: batch-id and messageId dedupe, and deterministic replay."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kairos.models import EventRecord, LogBatch, ProfileRecord
from kairos.store.partition import BoundedIdSet, PartitionState


def log_batch(account: str, records: list) -> LogBatch:
    """A log entry whose users are the records' own identifiers (no merges involved)."""
    return LogBatch(account, [r.user for r in records], records)

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000_000
ALL_TIME = (0, 1 << 62)


def ev(user: str, name: str = "Charged", ts: int = T0, message_id: str | None = None, **props: Any) -> EventRecord:
    return EventRecord(user, ts, name, props, message_id)


def count(state: PartitionState, account: str, name: str = "Charged") -> int:
    store = state.account(account)
    return 0 if store is None else store.count_events(name, *ALL_TIME)


# --- batch ids ------------------------------------------------------------------------


def test_same_batch_id_applied_twice_counts_once() -> None:
    state = PartitionState(0, dedupe_window=100)
    batch = log_batch("acct", [ev("identity:1"), ev("identity:2")])
    state.apply("req-1/0", "1-0", batch)
    state.apply("req-1/0", "2-0", batch)
    assert count(state, "acct") == 2
    assert state.has_batch("req-1/0")
    assert not state.has_batch("req-2/0")
    assert state.records_since_snapshot == 2
    # The log position still advances past the skipped entry, so replay does not revisit it.
    assert state.last_log_id == "2-0"


def test_different_batch_ids_both_count() -> None:
    state = PartitionState(0, dedupe_window=100)
    batch = log_batch("acct", [ev("identity:1")])
    state.apply("req-1/0", "1-0", batch)
    state.apply("req-2/0", "2-0", batch)
    assert count(state, "acct") == 2


def test_a_skipped_batch_id_skips_its_profiles_too() -> None:
    state = PartitionState(0, dedupe_window=100)
    state.apply("b", "1-0", log_batch("acct", [ProfileRecord("identity:1", T0, {"Plan": "gold"})]))
    state.apply("b", "2-0", log_batch("acct", [ProfileRecord("identity:1", T0, {"Plan": "free"})]))
    store = state.account("acct")
    assert store.profile_properties(store.find_user("identity:1")) == {"Plan": "gold"}


# --- messageIds -----------------------------------------------------------------------


def test_same_message_id_in_one_account_counts_once() -> None:
    state = PartitionState(0, dedupe_window=100)
    state.apply("b1", "1-0", log_batch("acct", [ev("identity:1", message_id="m-1")]))
    state.apply("b2", "2-0", log_batch("acct", [ev("identity:1", message_id="m-1"), ev("identity:1", message_id="m-2")]))
    assert count(state, "acct") == 2
    assert state.duplicates_dropped == 1


def test_same_message_id_twice_in_one_batch_counts_once() -> None:
    state = PartitionState(0, dedupe_window=100)
    state.apply("b1", "1-0", log_batch("acct", [ev("identity:1", message_id="m"), ev("identity:1", message_id="m")]))
    assert state.account("acct").event_count == 1
    assert state.duplicates_dropped == 1


def test_a_message_id_reused_for_another_user_or_kind_is_not_a_duplicate() -> None:
    """Dropping those would lose data silently; a retry is always the same user's record."""
    state = PartitionState(0, dedupe_window=100)
    records = [
        ev("identity:1", message_id="m"),
        ev("identity:2", message_id="m"),
        ProfileRecord("identity:1", T0, {"Plan": "pro"}, None, "m"),
    ]
    state.apply("b1", "1-0", log_batch("acct", records))
    store = state.account("acct")
    assert store.event_count == 2
    assert store.profile_properties(store.find_user("identity:1")) == {"Plan": "pro"}
    assert state.duplicates_dropped == 0


def test_same_message_id_in_two_accounts_counts_twice() -> None:
    state = PartitionState(0, dedupe_window=100)
    state.apply("b1", "1-0", log_batch("acct-a", [ev("identity:1", message_id="m-1")]))
    state.apply("b2", "2-0", log_batch("acct-b", [ev("identity:1", message_id="m-1")]))
    assert count(state, "acct-a") == 1
    assert count(state, "acct-b") == 1
    assert state.duplicates_dropped == 0


def test_records_without_message_id_are_never_deduped() -> None:
    state = PartitionState(0, dedupe_window=100)
    state.apply("b1", "1-0", log_batch("acct", [ev("identity:1"), ev("identity:1")]))
    state.apply("b2", "2-0", log_batch("acct", [ev("identity:1")]))
    assert count(state, "acct") == 3


def test_duplicate_profile_write_is_dropped() -> None:
    state = PartitionState(0, dedupe_window=100)
    state.apply("b1", "1-0", log_batch("acct", [ProfileRecord("identity:1", T0, {"Plan": "gold"}, None, "p-1")]))
    state.apply("b2", "2-0", log_batch("acct", [ProfileRecord("identity:1", T0, {"Plan": "gold"}, None, "p-2")]))
    state.apply("b3", "3-0", log_batch("acct", [ProfileRecord("identity:1", T0, {"Plan": "free"}, None, "p-1")]))
    store = state.account("acct")
    assert store.profile_properties(store.find_user("identity:1")) == {"Plan": "gold"}


def test_message_id_window_forgets_oldest_first() -> None:
    state = PartitionState(0, dedupe_window=2)
    for i, mid in enumerate(["m1", "m2", "m3"]):
        state.apply(f"b{i}", f"{i + 1}-0", log_batch("acct", [ev("identity:1", message_id=mid)]))
    state.apply("b3", "4-0", log_batch("acct", [ev("identity:1", message_id="m3")]))  # still remembered
    assert count(state, "acct") == 3
    state.apply("b4", "5-0", log_batch("acct", [ev("identity:1", message_id="m1")]))  # evicted: counts again
    assert count(state, "acct") == 4


def test_bounded_id_set() -> None:
    ids = BoundedIdSet(3, ["a", "b"])
    ids.add("c")
    ids.add("d")
    assert "a" not in ids
    assert list(ids.copy()) == ["b", "c", "d"]
    assert len(ids) == 3


def test_dedupe_memory_survives_snapshot() -> None:
    state = PartitionState(0, dedupe_window=100)
    state.apply("b1", "1-0", log_batch("acct", [ev("identity:1", message_id="m-1")]))
    restored = PartitionState.from_bytes(state.to_bytes(), dedupe_window=100)
    restored.apply("b1", "2-0", log_batch("acct", [ev("identity:1")]))  # retried batch
    restored.apply("b2", "3-0", log_batch("acct", [ev("identity:1", message_id="m-1")]))  # retried record
    assert count(restored, "acct") == 1
    assert restored.last_log_id == "3-0"


def test_events_before_a_profile_in_one_batch_apply_first() -> None:
    state = PartitionState(0, dedupe_window=100)
    state.apply("b1", "1-0", log_batch("acct", [
        ev("identity:1", ts=T0 + 5000),
        ProfileRecord("identity:1", T0, {"Name": "One"}),
        ev("identity:1", ts=T0 + 9000, name="Viewed"),
    ]))
    store = state.account("acct")
    user = store.find_user("identity:1")
    assert store.user_count == 1
    assert store.user_event_rows(user) == [1, 0]
    record = store.profile_record(user)
    assert record["first_seen"] == T0 // 1000
    assert record["last_seen"] == T0 // 1000 + 9
    assert record["profileData"] == {"Name": "One"}


# --- replay determinism ------------------------------------------------------------------


def make_log(n: int, seed: int = 5) -> list[tuple[str, str, LogBatch]]:
    """A log with retried batches, repeated messageIds, profiles and several accounts."""
    rng = np.random.default_rng(seed)
    log: list[tuple[str, str, LogBatch]] = []
    for i in range(n):
        account = f"acct-{int(rng.integers(0, 3))}"
        records: list[Any] = []
        for _ in range(int(rng.integers(1, 6))):
            user = f"identity:{int(rng.integers(0, 20))}"
            mid = f"m{int(rng.integers(0, 4))}" if rng.random() < 0.5 else None
            if rng.random() < 0.3:
                props = {"Plan": ["free", "gold", "pro"][int(rng.integers(0, 3))], "Seen": i}
                records.append(ProfileRecord(user, T0 + i * 1000, props, None, mid))
            else:
                name = ["Charged", "Viewed"][int(rng.integers(0, 2))]
                records.append(ev(user, name, T0 + i * 1000, mid, amount=float(rng.random()), step=i))
        batch_id = f"req-{i}/0"
        if i > 3 and rng.random() < 0.15:  # a retried hop re-sends an earlier batch id
            batch_id = log[int(rng.integers(0, i))][0]
        log.append((batch_id, f"{i + 1}-0", log_batch(account, records)))
    return log


def fingerprint(state: PartitionState) -> dict[str, Any]:
    out: dict[str, Any] = {"last_log_id": state.last_log_id}
    for account, store in sorted(state.accounts.items()):
        out[account] = {
            "profiles": {key: store.profile_record(store.find_user(key)) for key in store.user_keys},
            "charged": store.count_events("Charged", *ALL_TIME),
            "viewed": store.count_events("Viewed", *ALL_TIME),
            "records": store.event_records(np.arange(store.event_count, dtype=np.int64)),
        }
    return out


@pytest.mark.parametrize("cut", [1, 17, 39])
def test_snapshot_midway_then_replay_equals_uninterrupted(cut: int) -> None:
    log = make_log(40)
    uninterrupted = PartitionState(2, dedupe_window=25)
    for entry in log:
        uninterrupted.apply(*entry)

    first = PartitionState(2, dedupe_window=25)
    for entry in log[:cut]:
        first.apply(*entry)
    resumed = PartitionState.from_bytes(first.to_bytes(), dedupe_window=25)
    for entry in log[cut:]:
        resumed.apply(*entry)

    assert fingerprint(resumed) == fingerprint(uninterrupted)
    assert resumed.to_bytes() == uninterrupted.to_bytes()


def test_replay_of_the_same_log_is_deterministic() -> None:
    log = make_log(40, seed=11)
    a, b = PartitionState(0, dedupe_window=25), PartitionState(0, dedupe_window=25)
    for entry in log:
        a.apply(*entry)
    for entry in log:
        b.apply(*entry)
    assert a.to_bytes() == b.to_bytes()
    # And the log did exercise dedupe.
    assert a.duplicates_dropped > 0
    assert len({batch_id for batch_id, _, _ in log}) < len(log)
