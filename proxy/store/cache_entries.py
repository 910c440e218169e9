"""A cache's entries in the KV store, written behind the responses.

`CacheEntries(kv, kind="exact")` keeps one KV namespace per tenant namespace
(`exact:alice`), so tenants never read each other's entries and one tenant's
cache can be purged alone. Writes (put, touch, delete, evictions) run in order
in one background task, so no response waits for the store; an entry is
visible to `get` from the moment its write is queued (read-your-writes within
the process). A full queue drops writes rather than grow: a cache write is an
optimisation, never owed. The admin purge endpoint calls `purge_namespace` on
every kept object that has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from proxy.store.kv import KVStore, StoreError

log = logging.getLogger("proxy.cache")

Job = Callable[[], Awaitable[Any]]
# Writes between two real counts of a namespace's usage (a scan of the namespace):
# in between, the count is the last real one plus what this process wrote since.
RECOUNT_EVERY = 100


@dataclass(frozen=True, slots=True)
class SizeLimits:
    """Per-namespace bounds; past them the least recently used entries go, down to 90%
    (so the eviction query runs once per tenth of the limit, not on every write)."""

    max_entries: int | None = None
    max_bytes: int | None = None

    def exceeded_by(self, entries: int, size: int) -> bool:
        """True when a namespace holding `entries` / `size` bytes is over a limit."""
        return ((self.max_entries is not None and entries > self.max_entries)
                or (self.max_bytes is not None and size > self.max_bytes))

    def low_water(self) -> tuple[int | None, int | None]:
        """The limits eviction trims down to."""
        return (None if self.max_entries is None else self.max_entries - self.max_entries // 10,
                None if self.max_bytes is None else self.max_bytes - self.max_bytes // 10)


@dataclass(slots=True)
class _Tally:
    """A namespace's usage as last counted, plus this process's writes since then.

    It never undercounts this process's own writes (a replaced entry counts twice), so
    a write that takes the namespace over its limits is always followed by a real
    count; other processes' writes are seen at the next recount.
    """

    entries: int
    bytes: int
    writes: int = 0


class CacheEntries:
    """One cache kind's entries, namespaced per tenant, with write-behind and LRU bounds."""

    def __init__(self, kv: KVStore, kind: str, max_queue: int = 10_000) -> None:
        self.kv = kv
        self.kind = kind
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any] | None]] = asyncio.Queue(
            max_queue)
        self._pending: dict[tuple[str, str], tuple[int, bytes | None]] = {}
        self._seq = itertools.count()
        self._tallies: dict[str, _Tally] = {}
        self._worker: asyncio.Task[None] | None = None
        self.dropped = 0

    def ns(self, namespace: str) -> str:
        """The KV namespace holding a tenant namespace's entries."""
        return f"{self.kind}:{namespace}"

    async def get(self, namespace: str, key: str) -> bytes | None:
        """The entry (queued writes included), or None; raises StoreError."""
        pending = self._pending.get((namespace, key))
        if pending is not None:
            return pending[1]
        return await self.kv.get(self.ns(namespace), key)

    def put(self, namespace: str, key: str, value: bytes, ttl: float | None,
            limits: SizeLimits = SizeLimits()) -> bool:
        """Queue a write (then an eviction if the namespace is over `limits`)."""
        ns = self.ns(namespace)

        async def write() -> None:
            await self.kv.put(ns, key, value, ttl)
            tally = self._tallies.get(ns)
            if tally is not None:
                tally.entries, tally.bytes = tally.entries + 1, tally.bytes + len(value)
                tally.writes += 1
                if (tally.writes < RECOUNT_EVERY
                        and not limits.exceeded_by(tally.entries, tally.bytes)):
                    return
            used = await self.kv.usage(ns)
            if limits.exceeded_by(used.entries, used.bytes):
                self._tallies.pop(ns, None)
                evicted = await self.kv.evict(ns, *limits.low_water())
                log.info("cache %s: evicted %d least recently used entries", ns, evicted)
            else:
                self._tallies[ns] = _Tally(used.entries, used.bytes)

        return self._enqueue(write, (namespace, key), value)

    def delete(self, namespace: str, key: str) -> bool:
        """Queue the removal of one entry."""
        ns = self.ns(namespace)
        return self._enqueue(lambda: self.kv.delete(ns, key), (namespace, key), None)

    def touch(self, namespace: str, key: str) -> bool:
        """Queue a mark that an entry was just used (LRU order)."""
        ns = self.ns(namespace)
        return self._enqueue(lambda: self.kv.touch(ns, key))

    async def purge_namespace(self, namespace: str) -> int:
        """Remove a tenant namespace's entries (after the writes already queued)."""
        for slot in [s for s in self._pending if s[0] == namespace]:
            del self._pending[slot]
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        ns = self.ns(namespace)
        self._tallies.pop(ns, None)
        await self._queue.put((lambda: self.kv.purge(ns), future))
        self._start()
        return await future

    async def drain(self) -> None:
        """Wait until every queued write has run."""
        if self._worker is not None:
            await self._queue.join()

    async def aclose(self) -> None:
        """Finish the queued writes and stop the writer (at shutdown)."""
        await self.drain()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    def _enqueue(self, job: Job, slot: tuple[str, str] | None = None,
                 value: bytes | None = None) -> bool:
        seq = next(self._seq)

        async def tracked() -> None:
            try:
                await job()
            finally:
                if slot is not None and self._pending.get(slot, (None,))[0] == seq:
                    del self._pending[slot]

        try:
            self._queue.put_nowait((tracked, None))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("cache %s: write queue full, a write was dropped", self.kind)
            return False
        if slot is not None:
            self._pending[slot] = (seq, value)
        self._start()
        return True

    def _start(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            job, future = await self._queue.get()
            try:
                result = await job()
            except Exception as exc:  # the writer must outlive any one failed write
                if isinstance(exc, StoreError):
                    log.warning("cache %s: store write failed: %s", self.kind, exc)
                else:
                    log.exception("cache %s: write failed", self.kind)
                if future is not None and not future.done():
                    future.set_exception(exc)
            else:
                if future is not None and not future.done():
                    future.set_result(result)
            finally:
                self._queue.task_done()
