"""The identity graph: which canonical user each identifier of an account belongs to.

It lives in Redis so that every ingest actor and gateway agrees on it, and so that it is
as durable as the logs. A canonical user is a number, allocated per account; its
partition is a hash of it. Resolving and merging are one Lua script, so concurrent
ingest actors cannot interleave: two records that name a new identifier at once get
the same user, and two merges of the same users end the same way.

When a record ties identifiers of different users, the oldest user (the lowest number)
survives and takes every identifier of the others. The script records each merge as
pending; moving the data (kairos.merge) clears it.
"""

from __future__ import annotations

import time
from typing import Callable

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from kairos import keys

_RESOLVE = """
local base, merges_key, account, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ids_key, fwd_key = base .. 'ids', base .. 'fwd'
local users, merged = {}, {}
local i = 5
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local seen, known, unknown, survivor = {}, {}, {}, nil
  for j = i + 1, i + n do
    local ident = ARGV[j]
    local user = redis.call('HGET', ids_key, ident)
    if user then
      if not seen[user] then
        seen[user] = true
        table.insert(known, user)
        if survivor == nil or tonumber(user) < tonumber(survivor) then survivor = user end
      end
    else
      table.insert(unknown, ident)
    end
  end
  i = i + n + 1
  if survivor == nil then
    survivor = tostring(redis.call('INCR', base .. 'seq'))
  end
  for _, user in ipairs(known) do
    if user ~= survivor then
      local members = redis.call('SMEMBERS', base .. 'm:' .. user)
      for _, member in ipairs(members) do
        redis.call('HSET', ids_key, member, survivor)
        redis.call('SADD', base .. 'm:' .. survivor, member)
      end
      redis.call('DEL', base .. 'm:' .. user)
      redis.call('HSET', fwd_key, user, survivor)
      redis.call('HSET', merges_key, account .. '\\0' .. user, cjson.encode({account, user, survivor, now}))
      table.insert(merged, user)
      table.insert(merged, survivor)
    end
  end
  for _, ident in ipairs(unknown) do
    redis.call('HSET', ids_key, ident, survivor)
    redis.call('SADD', base .. 'm:' .. survivor, ident)
  end
  table.insert(users, survivor)
end
return {users, merged}
"""


_SPLIT = """
local base, merges_key, account, now, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ids_key, fwd_key, members_key = base .. 'ids', base .. 'fwd', base .. 'm:' .. user
if redis.call('HEXISTS', fwd_key, user) == 1 then
  return redis.error_reply('user ' .. user .. ' was merged away; demerge the user it went into')
end
local parts = {}
local i = 6
while i <= #ARGV do
  local n, source = tonumber(ARGV[i]), ARGV[i + 1]
  local fresh = tostring(redis.call('INCR', base .. 'seq'))
  for j = i + 2, i + 1 + n do
    local ident = ARGV[j]
    if redis.call('HGET', ids_key, ident) == user then
      redis.call('HSET', ids_key, ident, fresh)
      redis.call('SREM', members_key, ident)
      redis.call('SADD', base .. 'm:' .. fresh, ident)
    end
  end
  table.insert(parts, {source, fresh})
  i = i + n + 2
end
local remainder = tostring(redis.call('INCR', base .. 'seq'))
for _, ident in ipairs(redis.call('SMEMBERS', members_key)) do
  redis.call('HSET', ids_key, ident, remainder)
  redis.call('SADD', base .. 'm:' .. remainder, ident)
end
redis.call('DEL', members_key)
redis.call('HSET', fwd_key, user, remainder)
redis.call('HSET', merges_key, account .. '\\0' .. user, cjson.encode({account, user, remainder, now, parts}))
return {remainder, parts}
"""


class MergedAway(LookupError):
    """The user was merged into another (or split) already: there is nothing to split."""


class Merge(msgspec.Struct, frozen=True, array_like=True):
    """`user` was merged into `into` (which may since have been merged further). For a
    demerge, `parts` names the fresh user each merged-in user (by its source id) became,
    and `into` is the fresh user that keeps the rest."""

    account: str
    user: str
    into: str
    since: float = 0.0
    parts: tuple[tuple[str, str], ...] = ()


class IdentityGraph:
    def __init__(self, client: aioredis.Redis, clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._resolve = client.register_script(_RESOLVE)
        self._split = client.register_script(_SPLIT)
        self._clock = clock

    async def resolve(self, account: str, groups: list[list[str]]) -> tuple[list[str], list[Merge]]:
        """The canonical user of each group of identifiers (all the identifiers one record
        carries), creating users for new identifiers and merging users that a group ties
        together. Returns the users, in order, and the merges this call made."""
        if not groups:
            return [], []
        args: list[str | int] = [keys.identity_prefix(account), keys.PENDING_MERGES, account, repr(self._clock())]
        for group in groups:
            args.append(len(group))
            args.extend(group)
        users, merged = await self._resolve(args=args)
        now = self._clock()
        merges = [Merge(account, merged[k].decode(), merged[k + 1].decode(), now) for k in range(0, len(merged), 2)]
        return [u.decode() for u in users], merges

    async def split(self, account: str, user: str, parts: list[tuple[str, list[str]]]) -> Merge:
        """Undo merges: each (source, identifiers) part gets a fresh user holding those of
        the identifiers that are still `user`'s, and another fresh user takes the rest.
        `user` forwards to that one. Recorded as pending until its data has moved."""
        args: list[str | int] = [keys.identity_prefix(account), keys.PENDING_MERGES, account, repr(self._clock()), user]
        for source, identifiers in parts:
            args.extend([len(identifiers), source, *identifiers])
        try:
            remainder, parts_made = await self._split(args=args)
        except ResponseError as exc:
            if "merged away" in str(exc):
                raise MergedAway(str(exc)) from None
            raise
        made = tuple((source.decode(), fresh.decode()) for source, fresh in parts_made)
        return Merge(account, user, remainder.decode(), self._clock(), made)

    async def lookup(self, account: str, identifiers: list[str]) -> list[str | None]:
        """The users of known identifiers (None for unknown ones), creating nothing."""
        if not identifiers:
            return []
        found = await self._redis.hmget(keys.identity_prefix(account) + "ids", identifiers)
        return [u.decode() if u is not None else None for u in found]

    async def identifiers(self, account: str, user: str) -> list[str]:
        members = await self._redis.smembers(f"{keys.identity_prefix(account)}m:{user}")
        return sorted(m.decode() for m in members)

    async def current(self, account: str, user: str) -> str:
        """Where `user` lives now: itself, or the user it was merged into, followed
        through later merges."""
        fwd = keys.identity_prefix(account) + "fwd"
        seen = {user}
        while True:
            into = await self._redis.hget(fwd, user)
            if into is None:
                return user
            user = into.decode()
            if user in seen:
                raise RuntimeError(f"identity graph of {account} has a merge cycle through user {user}")
            seen.add(user)

    async def pending_merges(self) -> list[Merge]:
        raw = await self._redis.hgetall(keys.PENDING_MERGES)
        return [_decode_merge(value) for value in raw.values()]

    async def finish_merges(self, merges: list[Merge]) -> None:
        if merges:
            await self._redis.hdel(keys.PENDING_MERGES, *(f"{m.account}\x00{m.user}" for m in merges))


def _decode_merge(raw: bytes) -> Merge:
    account, user, into, since, *rest = msgspec.json.decode(raw)
    # cjson encodes an empty Lua table as {}, not [].
    parts = tuple((source, fresh) for source, fresh in rest[0]) if rest and rest[0] else ()
    return Merge(account, user, into, float(since), parts)
