"""A namespaced key-value store with TTL, for caches and stored summaries.

`KVStore` is the interface; `SqliteKV` the embedded default. Keys live in a
namespace (a tenant's cache namespace, or a stage's own) so one namespace can
be purged at once and never reads another's entries. Values are bytes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Protocol

import aiosqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, expires REAL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires);
"""


class KVStore(Protocol):
    """Namespaced bytes with optional expiry."""

    async def get(self, ns: str, key: str) -> bytes | None:
        """The value, or None when absent or expired."""
        ...

    async def put(self, ns: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store a value, expiring after `ttl` seconds (never when None)."""
        ...

    async def delete(self, ns: str, key: str) -> None:
        """Remove one entry."""
        ...

    async def purge(self, ns: str) -> int:
        """Remove a whole namespace; returns how many entries went."""
        ...

    def scan(self, ns: str) -> AsyncIterator[tuple[str, bytes]]:
        """Every live (key, value) of a namespace."""
        ...


class SqliteKV:
    """KVStore in the proxy's sqlite database."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def start(self) -> None:
        """Create the table if needed."""
        await self.db.executescript(_SCHEMA)

    async def get(self, ns: str, key: str) -> bytes | None:
        """The value, or None when absent or expired."""
        async with self.db.execute(
            "SELECT value FROM kv WHERE ns = ? AND key = ? AND (expires IS NULL OR expires > ?)",
            (ns, key, time.time()),
        ) as cur:
            row = await cur.fetchone()
        return bytes(row[0]) if row else None

    async def put(self, ns: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store a value, expiring after `ttl` seconds (never when None)."""
        expires = time.time() + ttl if ttl is not None else None
        await self.db.execute("INSERT OR REPLACE INTO kv (ns, key, value, expires) "
                              "VALUES (?, ?, ?, ?)", (ns, key, value, expires))

    async def delete(self, ns: str, key: str) -> None:
        """Remove one entry."""
        await self.db.execute("DELETE FROM kv WHERE ns = ? AND key = ?", (ns, key))

    async def purge(self, ns: str) -> int:
        """Remove a whole namespace; returns how many entries went."""
        cur = await self.db.execute("DELETE FROM kv WHERE ns = ?", (ns,))
        return cur.rowcount

    async def scan(self, ns: str) -> AsyncIterator[tuple[str, bytes]]:
        """Every live (key, value) of a namespace."""
        async with self.db.execute(
            "SELECT key, value FROM kv WHERE ns = ? AND (expires IS NULL OR expires > ?)",
            (ns, time.time()),
        ) as cur:
            async for key, value in cur:
                yield key, bytes(value)
