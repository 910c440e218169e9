"""ThreadStore in Redis, shared by proxy replicas.

Layout under `{prefix}thr:{owner-hash}:`: `o:{id}` a hash (kind, parent,
thread, body); `l:{kind}:{parent}` a sorted set of ids scored by a global
sequence (list order); `t:{thread}` the set of ids inside a thread (for the
cascade); `lock:{thread}` the active run's id with a TTL.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from redis.asyncio import Redis

from proxy.store.threads_store import Kind, Page, PageQuery, from_before, make_page

_BATCH = 100
_UPDATE_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 1 then redis.call('hset', KEYS[1], 'b', ARGV[1]) return 1 end
return 0
"""
_RELEASE_IF_HELD = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisThreadStore:
    """Objects as hashes, lists as sorted sets; every key is scoped by owner."""

    def __init__(self, redis: Redis, prefix: str = "proxy:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._update = redis.register_script(_UPDATE_IF_EXISTS)
        self._release = redis.register_script(_RELEASE_IF_HELD)

    def _key(self, owner: str, *parts: str) -> str:
        tag = hashlib.sha256(owner.encode()).hexdigest()[:16]
        return ":".join((f"{self.prefix}thr", tag, *parts))

    async def insert(self, owner: str, kind: Kind, obj: dict[str, Any], parent: str = "",
                     thread_id: str = "") -> None:
        """Store a new object at the end of its list."""
        seq = await self.redis.incr(f"{self.prefix}thr:seq")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(owner, "o", obj["id"]), mapping={
                "k": kind, "p": parent, "t": thread_id, "b": orjson.dumps(obj)})
            pipe.zadd(self._key(owner, "l", kind, parent), {obj["id"]: seq})
            if thread_id and kind != "thread":
                pipe.sadd(self._key(owner, "t", thread_id), obj["id"])
            await pipe.execute()

    async def update(self, owner: str, kind: Kind, obj: dict[str, Any]) -> bool:
        """Replace a stored object's body (keeping its place); False when it is gone."""
        if await self.get(owner, kind, obj["id"]) is None:
            return False
        return bool(await self._update(keys=[self._key(owner, "o", obj["id"])],
                                       args=[orjson.dumps(obj)]))

    async def get(self, owner: str, kind: Kind, obj_id: str) -> dict[str, Any] | None:
        """The object, or None when absent or owned by someone else."""
        stored_kind, body = await self.redis.hmget(self._key(owner, "o", obj_id), ["k", "b"])
        if body is None or stored_kind != kind.encode():
            return None
        return orjson.loads(body)

    async def delete(self, owner: str, kind: Kind, obj_id: str) -> bool:
        """Remove one object; False when there was none."""
        key = self._key(owner, "o", obj_id)
        stored_kind, parent, thread_id = await self.redis.hmget(key, ["k", "p", "t"])
        if stored_kind != kind.encode():
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.zrem(self._key(owner, "l", kind, parent.decode()), obj_id)
            if thread_id:
                pipe.srem(self._key(owner, "t", thread_id.decode()), obj_id)
            await pipe.execute()
        return True

    async def page(self, owner: str, kind: Kind, parent: str, query: PageQuery) -> Page:
        """One page of a list."""
        lst = self._key(owner, "l", kind, parent)
        low, high = "-inf", "+inf"
        newer, older = ("after", "before") if query.order == "asc" else ("before", "after")
        for cursor, is_low in ((getattr(query, newer), True), (getattr(query, older), False)):
            if cursor is None:
                continue
            score = await self.redis.zscore(lst, cursor)
            if score is None:
                return Page([], False)
            if is_low:
                low = f"({score}"
            else:
                high = f"({score}"
        ascending = (query.order == "asc") != from_before(query)
        rows: list[dict[str, Any]] = []
        offset = 0
        while len(rows) <= query.limit:
            ids = (await self.redis.zrangebyscore(lst, low, high, start=offset, num=_BATCH)
                   if ascending else
                   await self.redis.zrevrangebyscore(lst, high, low, start=offset, num=_BATCH))
            if not ids:
                break
            offset += len(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for obj_id in ids:
                    pipe.hget(self._key(owner, "o", obj_id.decode()), "b")
                bodies = await pipe.execute()
            for body in bodies:
                obj = orjson.loads(body) if body is not None else None
                if obj is not None and (query.match is None
                                        or obj.get(query.match[0]) == query.match[1]):
                    rows.append(obj)
        return make_page(rows[:query.limit + 1], query)

    async def delete_thread(self, owner: str, thread_id: str) -> bool:
        """Remove a thread with its messages, runs, steps and lock."""
        if await self.get(owner, "thread", thread_id) is None:
            return False
        members = [m.decode() for m in await self.redis.smembers(
            self._key(owner, "t", thread_id))]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(owner, "o", thread_id), self._key(owner, "t", thread_id),
                        self._key(owner, "lock", thread_id),
                        self._key(owner, "l", "message", thread_id),
                        self._key(owner, "l", "run", thread_id))
            pipe.zrem(self._key(owner, "l", "thread", ""), thread_id)
            for obj_id in members:
                pipe.delete(self._key(owner, "o", obj_id))
                if obj_id.startswith("run_"):
                    pipe.delete(self._key(owner, "l", "step", obj_id))
            await pipe.execute()
        return True

    async def claim(self, owner: str, thread_id: str, run_id: str, ttl: float) -> str | None:
        """Lock the thread for `run_id` (or extend its lock); else return the holder."""
        key = self._key(owner, "lock", thread_id)
        millis = max(1, int(ttl * 1000))
        if await self.redis.set(key, run_id, nx=True, px=millis):
            return None
        holder = await self.holder(owner, thread_id)
        if holder == run_id:
            await self.redis.pexpire(key, millis)
            return None
        if holder is None:  # expired between the two calls
            return await self.claim(owner, thread_id, run_id, ttl)
        return holder

    async def release(self, owner: str, thread_id: str, run_id: str) -> None:
        """Drop the thread's lock if `run_id` holds it."""
        await self._release(keys=[self._key(owner, "lock", thread_id)], args=[run_id])

    async def holder(self, owner: str, thread_id: str) -> str | None:
        """The run holding the thread's lock, if any."""
        value = await self.redis.get(self._key(owner, "lock", thread_id))
        return value.decode() if value is not None else None
