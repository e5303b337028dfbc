"""Accounts and their passcodes.

A passcode is stored only as a salted scrypt hash. Checking scrypt costs ~50 ms by
design, so a gateway remembers, for `auth_cache_s`, an HMAC of each passcode it has
verified (keyed by a per-process secret) and compares against that in constant time.
So a reset passcode stops working everywhere within `auth_cache_s` (the new one works
at once). Unknown accounts cost the same scrypt as wrong passcodes, so timing does not
tell which account ids exist, and at most a few hashes run at once.

Each account also has a Segment write key. Write keys are random 32-byte tokens, so a
fast hash (SHA-256) is enough to keep them out of a Redis dump; one key per account,
replaced whenever the passcode is.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from typing import Callable

import msgspec
import redis.asyncio as aioredis

from kairos import keys

_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
# Wrong passcodes cost a hash each; this bounds the CPU and memory they can take.
_CONCURRENT_HASHES = 4
_DUMMY_SALT = b"kairos-no-such-account"


class AccountError(ValueError):
    pass


class Credentials(msgspec.Struct, frozen=True):
    account_id: str
    name: str
    passcode: str
    write_key: str


def _new_account_id() -> str:
    # CleverTap's shape: XXX-XXX-XXXX.
    chars = [secrets.choice(_ID_ALPHABET) for _ in range(10)]
    return f"{''.join(chars[:3])}-{''.join(chars[3:6])}-{''.join(chars[6:])}"


def _digest(write_key: str) -> str:
    return hashlib.sha256(write_key.encode()).hexdigest()


def hash_passcode(passcode: str, salt: bytes) -> bytes:
    return hashlib.scrypt(passcode.encode(), salt=salt, maxmem=64 * 1024 * 1024, **_SCRYPT)


class Accounts:
    def __init__(self, client: aioredis.Redis, cache_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = client
        self._cache_s = cache_s
        self._clock = clock
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[bytes, float]] = {}
        self._hashing = asyncio.Semaphore(_CONCURRENT_HASHES)
        self._write_keys: dict[str, tuple[str, float]] = {}

    async def create(self, name: str) -> Credentials:
        if not name or len(name) > 200:
            raise AccountError("account name must be 1-200 characters")
        account_id = _new_account_id()
        if not await self._redis.hsetnx(keys.ACCOUNT_NAMES, name, account_id):
            raise AccountError(f"an account named {name!r} already exists")
        passcode = await self._store_passcode(account_id, name)
        return Credentials(account_id, name, passcode, await self._issue_write_key(account_id))

    async def reset_passcode(self, name: str) -> Credentials:
        """A new passcode for the named account (created if missing). The old one stops
        working within `auth_cache_s` on gateways that had it cached, at once elsewhere."""
        account_id = await self.find_by_name(name)
        if account_id is None:
            return await self.create(name)
        passcode = await self._store_passcode(account_id, name)
        return Credentials(account_id, name, passcode, await self._issue_write_key(account_id))

    async def _store_passcode(self, account_id: str, name: str) -> str:
        passcode = secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        digest = await asyncio.to_thread(hash_passcode, passcode, salt)
        await self._redis.hset(keys.account(account_id), mapping={"name": name, "salt": salt, "hash": digest})
        return passcode

    async def _issue_write_key(self, account_id: str) -> str:
        """A new write key for the account; its previous one stops working."""
        write_key = "wk_" + secrets.token_urlsafe(32)
        digest = _digest(write_key)
        previous = await self._redis.hget(keys.account(account_id), "write_key")
        # New key usable first, old one revoked last: a crash between leaves both working
        # (until the next reset), never neither.
        await self._redis.set(keys.write_key(digest), account_id)
        await self._redis.hset(keys.account(account_id), "write_key", digest)
        if previous is not None:
            await self._redis.delete(keys.write_key(previous.decode()))
        return write_key

    async def account_for_write_key(self, write_key: str) -> str | None:
        """The account a Segment write key belongs to, or None."""
        if not write_key or len(write_key) > 256 or not write_key.isascii():
            return None
        digest = _digest(write_key)
        cached = self._write_keys.get(digest)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        found = await self._redis.get(keys.write_key(digest))
        if found is None:
            return None
        account_id = found.decode()
        if len(self._write_keys) > 10_000:
            self._write_keys.clear()
        self._write_keys[digest] = (account_id, self._clock() + self._cache_s)
        return account_id

    async def find_by_name(self, name: str) -> str | None:
        found = await self._redis.hget(keys.ACCOUNT_NAMES, name)
        return found.decode() if found is not None else None

    async def authenticate(self, account_id: str, passcode: str) -> bool:
        if not account_id or not passcode or len(account_id) > 64 or len(passcode) > 256:
            return False
        presented = hmac.new(self._cache_key, passcode.encode(), hashlib.sha256).digest()
        cached = self._verified.get(account_id)
        if cached is not None and cached[1] > self._clock() and hmac.compare_digest(cached[0], presented):
            return True
        # Not the cached passcode: it may be a newly reset one, so ask the stored hash.
        salt, expected = await self._redis.hmget(keys.account(account_id), "salt", "hash")
        known = salt is not None and expected is not None
        async with self._hashing:
            actual = await asyncio.to_thread(hash_passcode, passcode, salt if known else _DUMMY_SALT)
        if not known or not hmac.compare_digest(actual, expected):
            return False
        self._verified[account_id] = (presented, self._clock() + self._cache_s)
        return True
