"""Admission control: a bounded number of uploads in flight per process and per account.

Past either bound the gateway answers 429 at once (CleverTap's "Too many concurrent
requests") instead of queueing, so memory stays bounded when shards fall behind.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from gateway.errors import ApiError


class Admission:
    def __init__(self, max_total: int, max_per_account: int) -> None:
        self.max_total = max_total
        self.max_per_account = max_per_account
        self.in_flight = 0
        self._per_account: dict[str, int] = {}
        self.rejected = 0

    @contextmanager
    def admit(self, account: str) -> Iterator[None]:
        mine = self._per_account.get(account, 0)
        if self.in_flight >= self.max_total or mine >= self.max_per_account:
            self.rejected += 1
            raise ApiError(429, "Too many concurrent requests")
        self.in_flight += 1
        self._per_account[account] = mine + 1
        try:
            yield
        finally:
            self.in_flight -= 1
            left = self._per_account[account] - 1
            if left:
                self._per_account[account] = left
            else:
                del self._per_account[account]
