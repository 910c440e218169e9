"""The semantic cache's entries: per-scope vector indexes, TTL, LRU eviction, persistence.

Entries of one tenant namespace live in the KV store under `semantic:{namespace}`
and are read back at start-up. Only entries of the same scope (namespace, model,
instructions hash, tool names) are ever compared. Search is an exact dot product
over a normalized float32 matrix up to ANN_MIN_ROWS entries per scope; above that
a faiss IVF index (`semantic_ann`) answers instead, built in a worker thread once
the scope crosses the size (or at start-up, in one batch) and rebuilt when a
quarter of its vectors were removed (removal only marks them dead).

Each process keeps its own index, so every FEED_POLL_SECONDS it follows the KV
store's change feed of the namespaces it holds: entries that other workers or
replicas stored are read and indexed, entries they removed (evicted, expired,
purged by an admin) are dropped. A process that fell behind the feed reloads
the namespace.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from proxy.embed import DIMENSIONS
from proxy.pipeline.semantic.ann import IvfIndex
from proxy.store.cache_entries import SizeLimits
from proxy.store.kv import FEED_PREFIX, KVStore, StoreError

Scope = tuple[str, str, str, str]  # namespace, model, instructions hash, tool names
INLINE_SEARCH_ROWS = 4096  # larger matrices are searched in a worker thread
# Brute force over 384 floats per row takes ~2.5 ms at 20k rows on the shared 2-core
# machine (12-40 ms at 100k); the IVF index answers in under 1 ms at either size.
ANN_MIN_ROWS = 20_000
FEED_POLL_SECONDS = 0.5
FEED_BATCH = 1000
LOADS_AT_ONCE = 8  # namespaces read from the store at the same time
log = logging.getLogger("proxy.semantic")


@dataclass(slots=True)
class Entry:
    """One cached answer and the question it answered."""

    key: str
    scope: Scope
    text: str
    vector: np.ndarray
    completion: dict[str, Any]
    created: float
    expires: float | None

    def to_bytes(self) -> bytes:
        """Serialized for the KV store."""
        return orjson.dumps({
            "scope": list(self.scope), "text": self.text, "completion": self.completion,
            "created": self.created, "expires": self.expires,
            "vector": base64.b64encode(self.vector.astype(np.float32).tobytes()).decode(),
        })

    @classmethod
    def from_bytes(cls, key: str, raw: bytes) -> Entry:
        """Read back what `to_bytes` wrote (KeyError, ValueError or TypeError if it cannot
        be: another format, another embedding size)."""
        data = orjson.loads(raw)
        vector = np.frombuffer(base64.b64decode(data["vector"]), dtype=np.float32)
        if vector.shape != (DIMENSIONS,):
            raise ValueError(f"stored vector has {vector.size} dimensions, not {DIMENSIONS}")
        return cls(key, tuple(data["scope"]), data["text"], vector.copy(),
                   data["completion"], data["created"], data["expires"])


class VectorIndex:
    """Unit vectors in a growable float32 matrix; nearest neighbours by dot product,
    or by an IVF index once the scope holds `ann_min_rows` vectors."""

    def __init__(self, capacity: int = 64, ann_min_rows: int | None = None) -> None:
        self.matrix = np.zeros((capacity, DIMENSIONS), dtype=np.float32)
        self.keys: list[str] = []
        self.rows: dict[str, int] = {}
        self.ann_min_rows = ANN_MIN_ROWS if ann_min_rows is None else ann_min_rows
        self.ann: IvfIndex | None = None
        self._ids: dict[str, int] = {}  # key -> id of its current vector in the IVF index
        self._live: dict[int, tuple[str, np.ndarray]] = {}  # id -> key, vector (id order)
        self._next_id = 0
        self._building = False
        self._removed_while_building: list[int] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, vector: np.ndarray) -> None:
        """Insert or replace the vector stored under `key`."""
        if vector.shape != (DIMENSIONS,):
            raise ValueError(f"vector of shape {vector.shape}, not ({DIMENSIONS},)")
        row = self.rows.get(key)
        if row is None:
            row = len(self.keys)
            if row == len(self.matrix):
                self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
            self.keys.append(key)
            self.rows[key] = row
        else:
            self._forget_id(key)
        self.matrix[row] = vector
        vector_id = self._next_id
        self._next_id += 1
        self._ids[key] = vector_id
        self._live[vector_id] = (key, vector)
        if self.ann is not None:
            self.ann.add(np.array([vector_id]), vector)

    def remove(self, key: str) -> None:
        """Drop `key` (the last row moves into its place)."""
        row = self.rows.pop(key, None)
        if row is None:
            return
        last = len(self.keys) - 1
        if row != last:
            moved = self.keys[last]
            self.matrix[row] = self.matrix[last]
            self.keys[row] = moved
            self.rows[moved] = row
        self.keys.pop()
        self._forget_id(key)
        if self.ann is not None and len(self.keys) < self.ann_min_rows // 2:
            self.ann = None

    def _forget_id(self, key: str) -> None:
        vector_id = self._ids.pop(key)
        del self._live[vector_id]
        if self.ann is not None:
            self.ann.dead += 1
        if self._building:
            self._removed_while_building.append(vector_id)

    def wants_ann_build(self) -> bool:
        """True when the IVF index should be (re)built: the scope crossed `ann_min_rows`,
        or a quarter of the indexed vectors were removed since the last build."""
        if self._building or len(self.keys) < self.ann_min_rows:
            return False
        return self.ann is None or self.ann.dead > self.ann.built_size // 4

    async def build_ann(self) -> None:
        """Build the IVF index from the current vectors in a worker thread, then swap it
        in after adding what arrived and marking what left meanwhile."""
        snapshot = list(self._live.items())
        if not snapshot:
            return
        self._building = True
        self._removed_while_building = []
        try:
            ids = np.fromiter((i for i, _ in snapshot), dtype=np.int64, count=len(snapshot))
            ann = await asyncio.to_thread(
                lambda: IvfIndex.build(ids, np.stack([v for _, (_, v) in snapshot])))
        finally:
            self._building = False
        newest = int(ids[-1])
        arrived = []
        for vector_id in reversed(self._live):
            if vector_id <= newest:
                break
            arrived.append(vector_id)
        if arrived:
            ann.add(np.array(arrived), np.stack([self._live[i][1] for i in arrived]))
        ann.dead = sum(1 for i in self._removed_while_building if i <= newest)
        self.ann = ann if len(self.keys) >= self.ann_min_rows // 2 else None

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The `k` nearest keys with their cosine similarity, best first."""
        if self.ann is not None:
            found = self.ann.search(query, 2 * k)
            return [(self._live[i][0], score) for i, score in found if i in self._live][:k]
        n = len(self.keys)
        if n == 0:
            return []
        scores = self.matrix[:n] @ query
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top])]
        return [(self.keys[i], float(scores[i])) for i in top]


def read_entry(namespace: str, key: str, raw: bytes) -> Entry | None:
    """The stored entry, or None (logged) when it cannot be read: another format, another
    embedding size. Such an entry is skipped, never served."""
    try:
        return Entry.from_bytes(key, raw)
    except (KeyError, ValueError, TypeError) as exc:
        log.error("semantic cache skips stored entry %s/%s: %s", namespace, key, exc)
        return None


class SemanticEntries:
    """Every namespace's entries, indexed per scope, persisted through the KV store."""

    def __init__(self, kv: KVStore, max_entries: int) -> None:
        self.kv = kv
        self.max_entries = max_entries
        self._entries: dict[str, OrderedDict[str, Entry]] = {}
        self._indexes: dict[Scope, VectorIndex] = {}
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._builds: set[asyncio.Task[None]] = set()
        self._cursors: dict[str, str] = {}  # namespace -> position in its change feed
        self._follower: asyncio.Task[None] | None = None
        self._feed_failing = False
        self._loading = asyncio.Semaphore(LOADS_AT_ONCE)
        self._closed = False

    @staticmethod
    def kv_namespace(namespace: str) -> str:
        """Where a tenant namespace's entries live in the KV store."""
        return f"{FEED_PREFIX}{namespace}"

    def start_loading(self, namespace: str) -> asyncio.Task[None]:
        """Begin reading a namespace's stored entries (once per process; a load that
        failed, Redis being down say, is tried again by the next caller)."""
        task = self._loads.get(namespace)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(namespace))
            self._loads[namespace] = task
            task.add_done_callback(lambda done: self._forget_failed_load(namespace, done))
        return task

    def _forget_failed_load(self, namespace: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None \
                and self._loads.get(namespace) is task:
            del self._loads[namespace]

    async def ensure_loaded(self, namespace: str) -> None:
        """Wait until a namespace's stored entries are in memory."""
        await asyncio.shield(self.start_loading(namespace))

    async def _load(self, namespace: str) -> None:
        ns = self.kv_namespace(namespace)
        async with self._loading:
            cursor = await self.kv.feed_cursor(ns)  # taken first: what changes during the scan
            loaded = [entry async for key, raw in self.kv.scan(ns)
                      if (entry := read_entry(namespace, key, raw)) is not None]
        self._entries.setdefault(namespace, OrderedDict())
        for entry in sorted(loaded, key=lambda e: e.created):
            self._remember(entry)
        scopes = {entry.scope for entry in loaded}
        for index in (self._indexes[scope] for scope in scopes):
            if index.wants_ann_build():
                await index.build_ann()
        self._cursors[namespace] = cursor  # ... is replayed by the follower
        if self._follower is None and not self._closed:
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    def _remember(self, entry: Entry) -> VectorIndex:
        """Hold an entry in memory and in its scope's index (newest last)."""
        entries = self._entries.setdefault(entry.scope[0], OrderedDict())
        entries[entry.key] = entry
        entries.move_to_end(entry.key)
        index = self._index(entry.scope)
        index.add(entry.key, entry.vector)
        return index

    def _forget(self, namespace: str, key: str) -> None:
        """Drop an entry from memory and its index (not from the store)."""
        entry = self._entries.get(namespace, OrderedDict()).pop(key, None)
        index = self._indexes.get(entry.scope) if entry is not None else None
        if index is not None:
            index.remove(key)
            self._maybe_build(index)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FEED_POLL_SECONDS)
            try:
                await self.catch_up()
                self._feed_failing = False
            except Exception as exc:  # the store is away (or a bug): keep following
                if not self._feed_failing:
                    log.warning("semantic cache cannot follow the store's changes (%s: %s); "
                                "retrying", type(exc).__name__, exc)
                self._feed_failing = True

    async def catch_up(self) -> None:
        """Apply what other processes stored in or removed from the loaded namespaces
        since the last look (reloading a namespace whose feed no longer reaches back)."""
        while self._cursors:
            asked = dict(self._cursors)  # a namespace may finish loading during the read
            found = await self.kv.changes(
                {self.kv_namespace(n): c for n, c in asked.items()}, FEED_BATCH)
            more = False
            for namespace in asked:
                changes = found[self.kv_namespace(namespace)]
                if not changes.complete:
                    await self._reload(namespace)
                    continue
                for op, key in changes.changes:
                    await self._apply(namespace, op, key)
                self._cursors[namespace] = changes.cursor
                more = more or changes.more
            if not more:
                return

    async def _apply(self, namespace: str, op: str, key: str) -> None:
        """Follow one change: index what was stored (or replaced), drop what went."""
        raw = None if op == "delete" else await self.kv.get(self.kv_namespace(namespace), key)
        entry = None if raw is None else read_entry(namespace, key, raw)
        if entry is None:
            self._forget(namespace, key)
            return
        held = self._entries.get(namespace, OrderedDict()).get(key)
        if held is not None and held.created == entry.created:
            return  # our own write, or one we already follow
        self._forget(namespace, key)
        self._maybe_build(self._remember(entry))

    async def _reload(self, namespace: str) -> None:
        log.warning("semantic cache fell behind the changes of %s; reloading it", namespace)
        for key in list(self._entries.get(namespace, ())):
            self._forget(namespace, key)
        await self._load(namespace)

    async def purge_namespace(self, namespace: str) -> int:
        """Drop every entry of a tenant namespace, here and in the store (the admin purge);
        the other processes drop theirs from the feed."""
        purged = await self.kv.purge(self.kv_namespace(namespace))
        for key in list(self._entries.get(namespace, ())):
            self._forget(namespace, key)
        return purged

    def _index(self, scope: Scope) -> VectorIndex:
        return self._indexes.setdefault(scope, VectorIndex())

    def _maybe_build(self, index: VectorIndex) -> None:
        """(Re)build a scope's IVF index in the background when it asks for one."""
        if index.wants_ann_build():
            task = asyncio.get_running_loop().create_task(index.build_ann())
            self._builds.add(task)
            task.add_done_callback(self._builds.discard)

    async def search(self, scope: Scope, vector: np.ndarray, k: int) -> list[tuple[Entry, float]]:
        """Live entries of `scope` nearest to `vector`, best first."""
        index = self._indexes.get(scope)
        if index is None or not len(index):
            return []
        if index.ann is None and len(index) > INLINE_SEARCH_ROWS:
            found = await asyncio.to_thread(index.search, vector, k)
        else:
            found = index.search(vector, k)
        entries = self._entries.get(scope[0], OrderedDict())
        now = time.time()
        live = []
        for key, score in found:
            entry = entries.get(key)
            if entry is None:
                continue
            if entry.expires is not None and entry.expires <= now:
                await self._expire(entry)
                continue
            live.append((entry, score))
        return live

    async def _expire(self, entry: Entry) -> None:
        """Drop an entry whose time is up, unless another process stored a newer answer
        under its key meanwhile (then that one is held instead)."""
        namespace, ns = entry.scope[0], self.kv_namespace(entry.scope[0])
        self._forget(namespace, entry.key)
        raw = await self.kv.get(ns, entry.key)
        newer = None if raw is None else read_entry(namespace, entry.key, raw)
        if newer is not None and newer.created != entry.created:
            self._maybe_build(self._remember(newer))
        else:
            await self.kv.delete(ns, entry.key)

    async def touch(self, entry: Entry) -> None:
        """Mark an entry as just used, here and in the store, whose order of use (every
        process's hits) is the one evictions follow. A store that fails only costs the
        entry its place in that order."""
        self._entries.get(entry.scope[0], OrderedDict()).move_to_end(entry.key, last=True)
        try:
            await self.kv.touch(self.kv_namespace(entry.scope[0]), entry.key)
        except StoreError as exc:
            log.warning("semantic cache could not mark %s as used: %s", entry.key, exc)

    async def add(self, entry: Entry, ttl: float | None) -> None:
        """Store an entry; beyond max_entries the store evicts the namespace's least
        recently used (by every process's hits) down to 90%, and every process forgets
        them."""
        namespace = entry.scope[0]
        entries = self._entries.setdefault(namespace, OrderedDict())
        self._maybe_build(self._remember(entry))
        ns = self.kv_namespace(namespace)
        await self.kv.put(ns, entry.key, entry.to_bytes(), ttl)
        limits = SizeLimits(max_entries=self.max_entries)
        if limits.exceeded_by(len(entries), 0):  # down to 90%: not an eviction per write
            await self.kv.evict(ns, *limits.low_water())
            await self.catch_up()  # forget here at once what the store evicted

    def count(self, namespace: str) -> int:
        """How many entries a namespace holds in memory."""
        return len(self._entries.get(namespace, ()))

    async def aclose(self) -> None:
        """Stop loading, following the feed and building indexes (at shutdown)."""
        self._closed = True
        for task in [*self._loads.values(), *([self._follower] if self._follower else [])]:
            task.cancel()
            self._builds.add(task)
        for task in list(self._builds):
            task.cancel()
        await asyncio.gather(*self._builds, return_exceptions=True)
