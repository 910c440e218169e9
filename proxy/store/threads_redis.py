"""ThreadStore in Redis, shared by proxy replicas.

Layout under `{prefix}thr:{owner-hash}:`: `b:{kind}:{id}` the object's JSON
(the kind in the key makes a get of the wrong kind miss); `m:{id}` a hash with
its list parent and thread (for deletes); `l:{kind}:{parent}` a sorted set of
ids scored by a global sequence (list order); `t:{thread}` the set of
`kind:id` inside a thread (for the cascade); `lock:{thread}` the active run's
id with a TTL.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from redis.asyncio import Redis

from proxy.store.redis_client import text
from proxy.store.threads_store import Kind, Page, PageQuery, from_before, make_page

_BATCH = 100
_RELEASE_IF_HELD = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisThreadStore:
    """Objects as JSON strings, lists as sorted sets; every key is scoped by owner."""

    def __init__(self, redis: Redis, prefix: str = "proxy:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._release = redis.register_script(_RELEASE_IF_HELD)

    def _key(self, owner: str, *parts: str) -> str:
        tag = hashlib.sha256(owner.encode()).hexdigest()[:16]
        return ":".join((f"{self.prefix}thr", tag, *parts))

    async def insert(self, owner: str, kind: Kind, obj: dict[str, Any], parent: str = "",
                     thread_id: str = "") -> None:
        """Store a new object at the end of its list."""
        seq = await self.redis.incr(f"{self.prefix}thr:seq")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(owner, "b", kind, obj["id"]), orjson.dumps(obj))
            pipe.hset(self._key(owner, "m", obj["id"]), mapping={"p": parent, "t": thread_id})
            pipe.zadd(self._key(owner, "l", kind, parent), {obj["id"]: seq})
            if thread_id and kind != "thread":
                pipe.sadd(self._key(owner, "t", thread_id), f"{kind}:{obj['id']}")
            await pipe.execute()

    async def update(self, owner: str, kind: Kind, obj: dict[str, Any]) -> bool:
        """Replace a stored object's body (keeping its place); False when it is gone."""
        return bool(await self.redis.set(self._key(owner, "b", kind, obj["id"]),
                                         orjson.dumps(obj), xx=True))

    async def get(self, owner: str, kind: Kind, obj_id: str) -> dict[str, Any] | None:
        """The object, or None when absent or owned by someone else."""
        body = await self.redis.get(self._key(owner, "b", kind, obj_id))
        return orjson.loads(body) if body is not None else None

    async def delete(self, owner: str, kind: Kind, obj_id: str) -> bool:
        """Remove one object; False when there was none."""
        if not await self.redis.exists(self._key(owner, "b", kind, obj_id)):
            return False
        meta = self._key(owner, "m", obj_id)
        parent, thread_id = await self.redis.hmget(meta, ["p", "t"])
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(owner, "b", kind, obj_id), meta)
            pipe.zrem(self._key(owner, "l", kind, text(parent or b"")), obj_id)
            if thread_id:
                pipe.srem(self._key(owner, "t", text(thread_id)), f"{kind}:{obj_id}")
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
            bodies = await self.redis.mget([self._key(owner, "b", kind, text(obj_id))
                                            for obj_id in ids])
            for body in bodies:
                obj = orjson.loads(body) if body is not None else None
                if obj is not None and (query.match is None
                                        or obj.get(query.match[0]) == query.match[1]):
                    rows.append(obj)
        return make_page(rows[:query.limit + 1], query)

    async def delete_thread(self, owner: str, thread_id: str) -> bool:
        """Remove a thread with its messages, runs, steps and lock."""
        if not await self.redis.exists(self._key(owner, "b", "thread", thread_id)):
            return False
        members = [text(m) for m in await self.redis.smembers(
            self._key(owner, "t", thread_id))]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(owner, "b", "thread", thread_id),
                        self._key(owner, "m", thread_id), self._key(owner, "t", thread_id),
                        self._key(owner, "lock", thread_id),
                        self._key(owner, "l", "message", thread_id),
                        self._key(owner, "l", "run", thread_id))
            pipe.zrem(self._key(owner, "l", "thread", ""), thread_id)
            for member in members:
                kind, _, obj_id = member.partition(":")
                pipe.delete(self._key(owner, "b", kind, obj_id), self._key(owner, "m", obj_id))
                if kind == "run":
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
        return text(value) if value is not None else None
