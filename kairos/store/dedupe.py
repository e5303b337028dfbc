"""Bounded memories of ids already applied: batch ids (retried hops) and client
`messageId`s (retried records). Both are in every snapshot, so replay is exact."""

from __future__ import annotations

from typing import Any


class BoundedIdSet:
    """The most recent `capacity` ids, oldest evicted first, each with an optional note."""

    __slots__ = ("capacity", "_ids")

    def __init__(self, capacity: int, ids: list[str] | dict[str, Any] | None = None) -> None:
        self.capacity = capacity
        self._ids: dict[str, Any] = dict(ids) if isinstance(ids, dict) else dict.fromkeys(ids or [])

    def __contains__(self, item: str) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, item: str) -> Any:
        return self._ids.get(item)

    def add(self, item: str, note: Any = None) -> str | None:
        """Remember `item`; returns the id evicted to make room, if any."""
        self._ids[item] = note
        if len(self._ids) > self.capacity:
            oldest = next(iter(self._ids))
            del self._ids[oldest]
            return oldest
        return None

    def copy(self) -> dict[str, Any]:
        """Every id with its note (None included), oldest first: a copy, cheap to take."""
        return dict(self._ids)


class MessageIdWindow:
    """Client record ids (`messageId`) recently applied, scoped to (account, user, kind),
    with an index by user so that a merge carries a user's ids to the user it joins, and
    for events the row each one is stored at, so that a merge carries each event's id
    with it: an event retried while its user was being merged is then kept once."""

    __slots__ = ("_ids", "_by_user")

    def __init__(self, capacity: int, ids: list[str] | None = None, rows: dict[str, int | None] | None = None) -> None:
        self._ids = BoundedIdSet(capacity)
        self._by_user: dict[str, dict[str, None]] = {}
        rows = rows or {}
        for key in ids or []:
            self._remember(key, rows.get(key))

    @staticmethod
    def _key(account: str, user: str, kind: str, message_id: str) -> str:
        return f"{account}\x00{user}\x00{kind}\x00{message_id}"

    @staticmethod
    def _user_of(key: str) -> str:
        account, user, _ = key.split("\x00", 2)
        return f"{account}\x00{user}"

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, account: str, user: str, kind: str, message_id: str) -> bool:
        return self._key(account, user, kind, message_id) in self._ids

    def add(self, account: str, user: str, kind: str, message_id: str, row: int | None = None) -> None:
        self._remember(self._key(account, user, kind, message_id), row)

    def set_row(self, account: str, user: str, message_id: str, row: int) -> None:
        """Where an event remembered by `add` was stored."""
        key = self._key(account, user, "e", message_id)
        if key in self._ids:
            self._ids.add(key, row)

    def _remember(self, key: str, row: int | None = None) -> None:
        evicted = self._ids.add(key, row)
        self._by_user.setdefault(self._user_of(key), {})[key] = None
        if evicted is not None:
            owner = self._user_of(evicted)
            keys = self._by_user[owner]
            del keys[evicted]
            if not keys:
                del self._by_user[owner]

    def of_user(self, account: str, user: str) -> list[tuple[str, str]]:
        """The (kind, message id) pairs remembered for a user."""
        keys = self._by_user.get(f"{account}\x00{user}", {})
        return [tuple(key.split("\x00", 3)[2:]) for key in keys]  # type: ignore[misc]

    def event_rows(self, account: str, user: str) -> dict[int, str]:
        """Row -> message id of the user's remembered events."""
        rows: dict[int, str] = {}
        for key in self._by_user.get(f"{account}\x00{user}", {}):
            row = self._ids.get(key)
            if row is not None:
                rows[row] = key.split("\x00", 3)[3]
        return rows

    def copy(self) -> dict[str, int | None]:
        """Every remembered key with its row (None for none), oldest first."""
        return self._ids.copy()
