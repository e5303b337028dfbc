"""Passcode hashing (scrypt) and authentication against an in-memory Redis stand-in."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from kairos import keys
from kairos.accounts import AccountError, Accounts, hash_passcode

pytestmark = pytest.mark.timeout(60)

SALT = bytes(range(16))


class FakeRedis:
    """Just the commands Accounts uses, with redis-py's bytes-out behaviour."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.strings: dict[str, bytes] = {}
        self.gets = 0

    async def set(self, key: str, value: Any) -> bool:
        self.strings[key] = self._b(value)
        return True

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return self.strings.get(key)

    async def delete(self, *keys: str) -> int:
        return sum(self.strings.pop(k, None) is not None for k in keys)

    @staticmethod
    def _b(value: Any) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    async def hsetnx(self, key: str, field: str, value: Any) -> int:
        h = self.hashes.setdefault(key, {})
        if field in h:
            return 0
        h[field] = self._b(value)
        return 1

    async def hset(self, key: str, field: str | None = None, value: Any = None, mapping: dict[str, Any] | None = None) -> int:
        fields = dict(mapping or {})
        if field is not None:
            fields[field] = value
        self.hashes.setdefault(key, {}).update({f: self._b(v) for f, v in fields.items()})
        return len(fields)

    async def hget(self, key: str, field: str) -> bytes | None:
        return self.hashes.get(key, {}).get(field)

    async def hmget(self, key: str, *fields: str) -> list[bytes | None]:
        h = self.hashes.get(key, {})
        return [h.get(f) for f in fields]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- hash_passcode ----------------------------------------------------------------------


def test_hash_is_scrypt_with_fixed_parameters() -> None:
    digest = hash_passcode("s3cret-passcode", SALT)
    assert digest == hashlib.scrypt(b"s3cret-passcode", salt=SALT, n=2**14, r=8, p=1, dklen=32)
    assert len(digest) == 32


def test_hash_is_deterministic_and_depends_on_salt_and_passcode() -> None:
    digest = hash_passcode("abc", SALT)
    assert hash_passcode("abc", SALT) == digest
    assert hash_passcode("abd", SALT) != digest
    assert hash_passcode("abc", SALT[::-1]) != digest
    assert digest != b"abc" and b"abc" not in digest


def test_hash_of_non_ascii_passcode() -> None:
    assert hash_passcode("p\u00e4sscode-\u20ac", SALT) == hashlib.scrypt(
        "p\u00e4sscode-\u20ac".encode(), salt=SALT, n=2**14, r=8, p=1, dklen=32)


# --- accounts over a fake Redis ---------------------------------------------------------


async def test_create_stores_only_a_salted_hash_and_authenticates() -> None:
    redis = FakeRedis()
    accounts = Accounts(redis, cache_s=60, clock=Clock())  # type: ignore[arg-type]
    creds = await accounts.create("Acme")
    assert re.fullmatch(r"[A-Z2-9]{3}-[A-Z2-9]{3}-[A-Z2-9]{4}", creds.account_id)
    assert creds.name == "Acme" and len(creds.passcode) >= 24
    stored = redis.hashes[keys.account(creds.account_id)]
    assert stored["name"] == b"Acme"
    assert len(stored["salt"]) == 16
    assert stored["hash"] == hash_passcode(creds.passcode, stored["salt"])
    assert creds.passcode.encode() not in b"".join(stored.values())
    assert await accounts.find_by_name("Acme") == creds.account_id
    assert await accounts.find_by_name("Nobody") is None

    assert await accounts.authenticate(creds.account_id, creds.passcode)
    assert not await Accounts(redis).authenticate(creds.account_id, creds.passcode + "x")  # type: ignore[arg-type]
    assert not await accounts.authenticate("NOT-AN-ACCOUNT", creds.passcode)
    assert not await accounts.authenticate(creds.account_id, "")
    assert not await accounts.authenticate("", creds.passcode)


async def test_duplicate_and_bad_names_are_rejected() -> None:
    accounts = Accounts(FakeRedis())  # type: ignore[arg-type]
    await accounts.create("Acme")
    with pytest.raises(AccountError, match="already exists"):
        await accounts.create("Acme")
    for bad in ("", "x" * 201):
        with pytest.raises(AccountError):
            await accounts.create(bad)


async def test_wrong_passcode_is_rejected_while_a_right_one_is_cached() -> None:
    redis = FakeRedis()
    clock = Clock()
    accounts = Accounts(redis, cache_s=60, clock=clock)  # type: ignore[arg-type]
    creds = await accounts.create("Acme")
    assert await accounts.authenticate(creds.account_id, creds.passcode)
    assert not await accounts.authenticate(creds.account_id, "guess")
    assert await accounts.authenticate(creds.account_id, creds.passcode)


async def test_cache_expires_so_a_reset_eventually_revokes_the_old_passcode() -> None:
    redis = FakeRedis()
    clock = Clock()
    accounts = Accounts(redis, cache_s=60, clock=clock)  # type: ignore[arg-type]
    old = await accounts.create("Acme")
    assert await accounts.authenticate(old.account_id, old.passcode)
    new = await Accounts(redis).reset_passcode("Acme")  # type: ignore[arg-type]  # e.g. from the CLI
    assert new.account_id == old.account_id and new.passcode != old.passcode
    clock.now += 61
    assert not await accounts.authenticate(old.account_id, old.passcode)
    assert await accounts.authenticate(new.account_id, new.passcode)


async def test_new_passcode_works_at_once_after_a_reset() -> None:
    redis = FakeRedis()
    clock = Clock()
    accounts = Accounts(redis, cache_s=60, clock=clock)  # type: ignore[arg-type]
    old = await accounts.create("Acme")
    assert await accounts.authenticate(old.account_id, old.passcode)  # now cached
    new = await accounts.reset_passcode("Acme")
    assert await accounts.authenticate(new.account_id, new.passcode)


async def test_reset_passcode_of_a_missing_account_creates_it() -> None:
    accounts = Accounts(FakeRedis())  # type: ignore[arg-type]
    creds = await accounts.reset_passcode("Fresh")
    assert await accounts.find_by_name("Fresh") == creds.account_id
    assert await accounts.authenticate(creds.account_id, creds.passcode)


# --- Segment write keys -----------------------------------------------------------------


async def test_write_key_names_its_account_and_is_stored_only_hashed() -> None:
    redis = FakeRedis()
    clock = Clock()
    accounts = Accounts(redis, cache_s=60, clock=clock)  # type: ignore[arg-type]
    creds = await accounts.create("Acme")
    assert creds.write_key.startswith("wk_") and len(creds.write_key) > 40
    assert await accounts.account_for_write_key(creds.write_key) == creds.account_id
    assert creds.write_key not in repr((redis.strings, redis.hashes))
    for bad in ("", "wk_nope", "x" * 300, "wk_\u00e9"):
        assert await accounts.account_for_write_key(bad) is None


async def test_a_reset_replaces_the_write_key() -> None:
    redis = FakeRedis()
    clock = Clock()
    accounts = Accounts(redis, cache_s=60, clock=clock)  # type: ignore[arg-type]
    old = await accounts.create("Acme")
    new = await accounts.reset_passcode("Acme")
    assert new.write_key != old.write_key
    assert await accounts.account_for_write_key(new.write_key) == old.account_id
    # Another gateway (no cache) refuses the old key at once; this one once its cache ends.
    assert await Accounts(redis, cache_s=60, clock=clock).account_for_write_key(old.write_key) is None  # type: ignore[arg-type]
    clock.now += 61
    assert await accounts.account_for_write_key(old.write_key) is None


async def test_a_known_write_key_is_answered_from_the_cache() -> None:
    redis = FakeRedis()
    accounts = Accounts(redis, cache_s=60, clock=Clock())  # type: ignore[arg-type]
    creds = await accounts.create("Acme")
    for _ in range(5):
        await accounts.account_for_write_key(creds.write_key)
    assert redis.gets == 1
