"""RedisKV: the KVStore shared by proxy replicas (redis.asyncio).

Layout per namespace, all under one hash tag so a cluster keeps them in one slot:

    {prefix}kv:{ns}:v:KEY   the value (Redis expiry = the entry's TTL)
    {prefix}kv:{ns}:used    sorted set KEY -> last use (unix s): the LRU order, and the key index
    {prefix}kv:{ns}:exp     sorted set KEY -> expiry (unix s), so expired keys leave the index
    {prefix}kv:{ns}:size    hash KEY -> value bytes
    {prefix}kv:{ns}:bytes   the namespace's total value bytes
    {prefix}kv:{ns}:feed    stream of changes (op put|delete, key), about FEED_MAX long,
                            for namespaces under FEED_PREFIX only

Writes and evictions are Lua scripts, so the index and the byte count never
disagree with the values. Purge walks the namespace's own index, never a
pattern scan, so it cannot touch another namespace. Redis errors leave this
module as StoreError.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import KeyT, StreamIdT

from proxy.store.kv import FEED_MAX, FEED_PREFIX, Changes, KVUsage, StoreError, translate_errors
from proxy.store.redis_client import binary, read_streams, text

_BATCH = 500
# KEYS: value, used, exp, size, bytes, feed; ARGV: key, value, ttl ms (0: none), now (s),
# feed length (0: no feed)
_PUT = """
local old = redis.call('HGET', KEYS[4], ARGV[1])
if old then redis.call('DECRBY', KEYS[5], old) end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
  redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) + ttl / 1000, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
redis.call('HSET', KEYS[4], ARGV[1], #ARGV[2])
redis.call('INCRBY', KEYS[5], #ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
if tonumber(ARGV[5]) > 0 then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], '*', 'op', 'put', 'key', ARGV[1])
end
return 1
"""
# KEYS: used, exp, size, bytes, feed; ARGV: value key prefix, now (s), max entries,
# max bytes (-1: none), feed length (0: no feed)
# Drops expired keys from the index, then the least recently used until within the limits.
_EVICT = """
local removed = 0
local function drop(k)
  local s = redis.call('HGET', KEYS[3], k)
  if s then redis.call('DECRBY', KEYS[4], s) end
  redis.call('HDEL', KEYS[3], k)
  redis.call('ZREM', KEYS[1], k)
  redis.call('ZREM', KEYS[2], k)
  if tonumber(ARGV[5]) > 0 then
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'op', 'delete', 'key', k)
  end
  return redis.call('DEL', ARGV[1] .. k)
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, 10000)) do
  drop(k)
end
local max_n, max_b = tonumber(ARGV[3]), tonumber(ARGV[4])
while max_n >= 0 and redis.call('ZCARD', KEYS[1]) > max_n do
  removed = removed + drop(redis.call('ZRANGE', KEYS[1], 0, 0)[1])
end
while max_b >= 0 and tonumber(redis.call('GET', KEYS[4]) or '0') > max_b
      and redis.call('ZCARD', KEYS[1]) > 0 do
  removed = removed + drop(redis.call('ZRANGE', KEYS[1], 0, 0)[1])
end
return removed
"""
# KEYS: value, used, exp, size, bytes, feed; ARGV: key, feed length (0: no feed)
_DELETE = """
local s = redis.call('HGET', KEYS[4], ARGV[1])
if s then redis.call('DECRBY', KEYS[5], s) end
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[2], '*', 'op', 'delete', 'key', ARGV[1])
end
return redis.call('DEL', KEYS[1])
"""


_translated = translate_errors("redis", RedisError, OSError)


class RedisKV:
    """KVStore in Redis, under a configurable key prefix (storage.redis_prefix)."""

    def __init__(self, redis: Redis, prefix: str = "proxy:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._put = redis.register_script(_PUT)
        self._evict = redis.register_script(_EVICT)
        self._delete = redis.register_script(_DELETE)

    def _keys(self, ns: str) -> tuple[str, str, str, str, str]:
        """Value-key prefix, then the used, exp, size and bytes keys of a namespace."""
        base = f"{self.prefix}kv:{{{ns}}}:"
        return base + "v:", base + "used", base + "exp", base + "size", base + "bytes"

    def _feed(self, ns: str) -> str:
        """The namespace's change stream."""
        return f"{self.prefix}kv:{{{ns}}}:feed"

    @staticmethod
    def _feed_length(ns: str) -> int:
        """How many changes the namespace's stream keeps (0: it has none)."""
        return FEED_MAX if ns.startswith(FEED_PREFIX) else 0

    @_translated
    async def get(self, ns: str, key: str) -> bytes | None:
        """The value, or None when absent or expired."""
        value = await self.redis.get(self._keys(ns)[0] + key)
        return None if value is None else binary(value)

    @_translated
    async def put(self, ns: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store a value, expiring after `ttl` seconds (never when None)."""
        values, *index = self._keys(ns)
        feed = self._feed(ns)
        if ttl is not None and ttl <= 0:  # born expired: the same as absent
            await self._delete(keys=[values + key, *index, feed], args=[key, self._feed_length(ns)])
            return
        ttl_ms = 0 if ttl is None else max(1, int(ttl * 1000))
        await self._put(keys=[values + key, *index, feed],
                        args=[key, value, ttl_ms, time.time(), self._feed_length(ns)])

    @_translated
    async def delete(self, ns: str, key: str) -> None:
        """Remove one entry."""
        values, *index = self._keys(ns)
        await self._delete(keys=[values + key, *index, self._feed(ns)],
                           args=[key, self._feed_length(ns)])

    @_translated
    async def purge(self, ns: str) -> int:
        """Remove a whole namespace; returns how many live entries went."""
        values, used, *rest = self._keys(ns)
        removed = 0
        while True:
            batch = [text(k) for k in await self.redis.zrange(used, 0, _BATCH - 1)]
            if not batch:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(*(values + k for k in batch))
                pipe.zrem(used, *batch)
                for k in batch if self._feed_length(ns) else ():
                    pipe.xadd(self._feed(ns), {"op": "delete", "key": k}, maxlen=FEED_MAX,
                              approximate=True)
                removed += int((await pipe.execute())[0])
        await self.redis.delete(*rest)
        return removed

    async def scan(self, ns: str) -> AsyncIterator[tuple[str, bytes]]:
        """Every live (key, value) of a namespace."""
        values, used, *_ = self._keys(ns)
        try:
            cursor = 0
            while True:
                cursor, pairs = await self.redis.zscan(used, cursor, count=_BATCH)
                keys = [text(member) for member, _score in pairs]
                found: list[Any] = await self.redis.mget([values + k for k in keys]) if keys else []
                for key, value in zip(keys, found):
                    if value is not None:
                        yield key, value
                if cursor == 0:
                    break
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis store failed: {type(exc).__name__}: {exc}") from exc

    @_translated
    async def touch(self, ns: str, key: str) -> None:
        """Mark an entry as just used (it moves to the back of the eviction order)."""
        await self.redis.zadd(self._keys(ns)[1], {key: time.time()}, xx=True)

    @_translated
    async def usage(self, ns: str) -> KVUsage:
        """Entries and value bytes the namespace holds."""
        _, used, _, _, total = self._keys(ns)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(used)
            pipe.get(total)
            entries, size = await pipe.execute()
        return KVUsage(int(entries), int(size or 0))

    @_translated
    async def evict(self, ns: str, max_entries: int | None = None,
                    max_bytes: int | None = None) -> int:
        """Drop expired entries, then least recently used ones until within both limits;
        returns how many live entries went."""
        values, *index = self._keys(ns)
        limits = [-1 if limit is None else limit for limit in (max_entries, max_bytes)]
        return int(await self._evict(keys=[*index, self._feed(ns)],
                                     args=[values, time.time(), *limits,
                                           self._feed_length(ns)]))

    @_translated
    async def feed_cursor(self, ns: str) -> str:
        """A cursor just after the namespace's newest change: a marker entry added now, so
        that the cursor names an entry the stream still holds."""
        marker = await self.redis.xadd(self._feed(ns), {"op": "mark", "key": ""},
                                       maxlen=FEED_MAX, approximate=True)
        return text(marker)

    @_translated
    async def changes(self, cursors: Mapping[str, str], limit: int = 1000
                      ) -> dict[str, Changes]:
        """The changes after each namespace's cursor: one XREAD over all the streams (up
        to `limit` per stream), then, for the streams that moved, whether each still holds
        its cursor's entry (if not, it was trimmed past it: incomplete)."""
        streams: dict[KeyT, StreamIdT] = {self._feed(ns): cursor
                                           for ns, cursor in cursors.items()}
        moved = read_streams(await self.redis.xread(streams, count=limit) if streams else None)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in moved:
                pipe.xrange(stream, min=streams[stream], max=streams[stream], count=1)
            held = dict(zip(moved, await pipe.execute())) if moved else {}
        result = {}
        for ns, cursor in cursors.items():
            entries = moved.get(self._feed(ns), [])
            found = [(fields[b"op"].decode(), fields[b"key"].decode())
                     for _, fields in entries if fields[b"op"] != b"mark"]
            result[ns] = Changes(entries[-1][0].decode() if entries else cursor, found,
                                 not entries or bool(held.get(self._feed(ns))),
                                 len(entries) == limit)
        return result
