"""The semantic cache's entries: per-scope vector indexes, TTL, LRU eviction, persistence.

Entries of one tenant namespace live in the KV store under `semantic:{namespace}`
and are read back at start-up. Only entries of the same scope (namespace, model,
instructions hash, tool names) are ever compared. Search is a dot product over a
normalized float32 matrix; measured at 100k x 384 it stays within the latency
budget (bench/cache.py semantic), so no ANN library is needed.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from proxy.embed import DIMENSIONS
from proxy.store.kv import KVStore

Scope = tuple[str, str, str, str]  # namespace, model, instructions hash, tool names
INLINE_SEARCH_ROWS = 4096  # larger matrices are searched in a worker thread


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
        """Read back what `to_bytes` wrote."""
        data = orjson.loads(raw)
        vector = np.frombuffer(base64.b64decode(data["vector"]), dtype=np.float32)
        return cls(key, tuple(data["scope"]), data["text"], vector.copy(),  # type: ignore[arg-type]
                   data["completion"], data["created"], data["expires"])


class VectorIndex:
    """Unit vectors in a growable float32 matrix; nearest neighbours by dot product."""

    def __init__(self, capacity: int = 64) -> None:
        self.matrix = np.zeros((capacity, DIMENSIONS), dtype=np.float32)
        self.keys: list[str] = []
        self.rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, vector: np.ndarray) -> None:
        """Insert or replace the vector stored under `key`."""
        row = self.rows.get(key)
        if row is None:
            row = len(self.keys)
            if row == len(self.matrix):
                self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
            self.keys.append(key)
            self.rows[key] = row
        self.matrix[row] = vector

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

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The `k` nearest keys with their cosine similarity, best first."""
        n = len(self.keys)
        if n == 0:
            return []
        scores = self.matrix[:n] @ query
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top])]
        return [(self.keys[i], float(scores[i])) for i in top]


class SemanticEntries:
    """Every namespace's entries, indexed per scope, persisted through the KV store."""

    def __init__(self, kv: KVStore, max_entries: int) -> None:
        self.kv = kv
        self.max_entries = max_entries
        self._entries: dict[str, OrderedDict[str, Entry]] = {}
        self._indexes: dict[Scope, VectorIndex] = {}
        self._loads: dict[str, asyncio.Task[None]] = {}

    @staticmethod
    def kv_namespace(namespace: str) -> str:
        """Where a tenant namespace's entries live in the KV store."""
        return f"semantic:{namespace}"

    def start_loading(self, namespace: str) -> asyncio.Task[None]:
        """Begin reading a namespace's stored entries (once per process)."""
        task = self._loads.get(namespace)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(namespace))
            self._loads[namespace] = task
        return task

    async def ensure_loaded(self, namespace: str) -> None:
        """Wait until a namespace's stored entries are in memory."""
        await asyncio.shield(self.start_loading(namespace))

    async def _load(self, namespace: str) -> None:
        entries = self._entries.setdefault(namespace, OrderedDict())
        loaded = [Entry.from_bytes(key, raw)
                  async for key, raw in self.kv.scan(self.kv_namespace(namespace))]
        for entry in sorted(loaded, key=lambda e: e.created):
            entries[entry.key] = entry
            self._index(entry.scope).add(entry.key, entry.vector)

    def _index(self, scope: Scope) -> VectorIndex:
        return self._indexes.setdefault(scope, VectorIndex())

    async def search(self, scope: Scope, vector: np.ndarray, k: int) -> list[tuple[Entry, float]]:
        """Live entries of `scope` nearest to `vector`, best first."""
        index = self._indexes.get(scope)
        if index is None or not len(index):
            return []
        if len(index) > INLINE_SEARCH_ROWS:
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
                await self.remove(entry)
                continue
            live.append((entry, score))
        return live

    def touch(self, entry: Entry) -> None:
        """Mark an entry as just used (it is evicted last)."""
        self._entries.get(entry.scope[0], OrderedDict()).move_to_end(entry.key, last=True)

    async def add(self, entry: Entry, ttl: float | None) -> None:
        """Store an entry, evicting the namespace's least recently used beyond max_entries."""
        namespace = entry.scope[0]
        entries = self._entries.setdefault(namespace, OrderedDict())
        entries[entry.key] = entry
        entries.move_to_end(entry.key)
        self._index(entry.scope).add(entry.key, entry.vector)
        await self.kv.put(self.kv_namespace(namespace), entry.key, entry.to_bytes(), ttl)
        while len(entries) > self.max_entries:
            _, oldest = next(iter(entries.items()))
            await self.remove(oldest)

    async def remove(self, entry: Entry) -> None:
        """Forget one entry, here and in the store."""
        self._entries.get(entry.scope[0], OrderedDict()).pop(entry.key, None)
        index = self._indexes.get(entry.scope)
        if index is not None:
            index.remove(entry.key)
        await self.kv.delete(self.kv_namespace(entry.scope[0]), entry.key)

    def count(self, namespace: str) -> int:
        """How many entries a namespace holds in memory."""
        return len(self._entries.get(namespace, ()))
