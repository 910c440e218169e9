"""A namespaced key-value store with TTL, for caches and stored summaries.

`KVStore` is the interface; `SqliteKV` the embedded default, `RedisKV`
(proxy/store/redis_kv.py) the one shared by replicas. Keys live in a namespace
(a tenant's cache namespace, or a stage's own) so one namespace can be purged
at once and never reads another's entries. Values are bytes. Every entry
remembers when it was last used (`put` or `touch`), so a namespace can be kept
under a size by evicting the least recently used entries first.

Namespaces under FEED_PREFIX (the semantic cache's, which every process also
keeps in memory as a vector index) have a change feed: which keys were put or
removed (deleted, evicted, purged), in order, so that a process can follow what
the other workers and replicas wrote. `feed_cursor` starts a cursor; `changes`
reads many namespaces' feeds in one call; a reader that fell behind what the
feed keeps (an hour in sqlite, about FEED_MAX changes per namespace in Redis) is
told so and should reload.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar

import aiosqlite

P = ParamSpec("P")
R = TypeVar("R")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, expires REAL,
    used REAL NOT NULL DEFAULT 0, size INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires);
CREATE TABLE IF NOT EXISTS kv_feed (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT NOT NULL, key TEXT NOT NULL,
    op TEXT NOT NULL, ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_feed_ts ON kv_feed (ts);
"""
FEED_PREFIX = "semantic:"  # namespaces with a change feed
# (Re)made in one transaction at start, so that a change of what they cover applies.
_FEED_TRIGGERS = f"""
BEGIN IMMEDIATE;
DROP TRIGGER IF EXISTS kv_feed_put;
DROP TRIGGER IF EXISTS kv_feed_delete;
CREATE TRIGGER kv_feed_put AFTER INSERT ON kv WHEN NEW.ns GLOB '{FEED_PREFIX}*' BEGIN
    INSERT INTO kv_feed (ns, key, op, ts)
    VALUES (NEW.ns, NEW.key, 'put', (julianday('now') - 2440587.5) * 86400.0);
END;
CREATE TRIGGER kv_feed_delete AFTER DELETE ON kv WHEN OLD.ns GLOB '{FEED_PREFIX}*' BEGIN
    INSERT INTO kv_feed (ns, key, op, ts)
    VALUES (OLD.ns, OLD.key, 'delete', (julianday('now') - 2440587.5) * 86400.0);
END;
COMMIT;
"""
# the last id ever given out (pruning cannot lower it)
_FEED_TOP = "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'kv_feed'"
_FEED_SPAN = ("SELECT COALESCE(MAX(seq), 0), (SELECT MIN(id) FROM kv_feed) "
              "FROM sqlite_sequence WHERE name = 'kv_feed'")
FEED_KEEP_SECONDS = 3600.0  # sqlite keeps an hour of changes
FEED_MAX = 2_000  # Redis keeps about this many changes per namespace
_PRUNE_EVERY_SECONDS = 60.0
_LRU_INDEX = "CREATE INDEX IF NOT EXISTS kv_lru ON kv (ns, used, size);"
_ADD_LRU_COLUMNS = """
ALTER TABLE kv ADD COLUMN used REAL NOT NULL DEFAULT 0;
ALTER TABLE kv ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE kv SET size = length(value);
"""
# keep the `max_entries` most recently used, then drop further while over `max_bytes`
_EVICT = """
DELETE FROM kv WHERE ns = ? AND key IN (
    SELECT key FROM (
        SELECT key, ROW_NUMBER() OVER w AS n, SUM(size) OVER w AS total FROM kv WHERE ns = ?
        WINDOW w AS (ORDER BY used DESC, key ROWS UNBOUNDED PRECEDING))
    WHERE n > ? OR total > ?)
"""
_UNLIMITED = 2**62


class StoreError(Exception):
    """The store's backend failed (Redis down, sqlite locked); callers may degrade."""


class KVUsage(NamedTuple):
    """How much a namespace holds (expired entries count until evicted)."""

    entries: int
    bytes: int


class Changes(NamedTuple):
    """A stretch of a namespace's change feed."""

    cursor: str  # resume from here
    changes: list[tuple[str, str]]  # (op, key) in order; op is "put" or "delete"
    complete: bool  # False: changes were dropped since the cursor (reload the namespace)
    more: bool  # True: the read stopped at its limit; read again from `cursor`


class KVStore(Protocol):
    """Namespaced bytes with optional expiry and least-recently-used eviction."""

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
        """Remove a whole namespace; returns how many live entries went."""
        ...

    def scan(self, ns: str) -> AsyncIterator[tuple[str, bytes]]:
        """Every live (key, value) of a namespace."""
        ...

    async def touch(self, ns: str, key: str) -> None:
        """Mark an entry as just used (it moves to the back of the eviction order)."""
        ...

    async def usage(self, ns: str) -> KVUsage:
        """Entries and value bytes the namespace holds."""
        ...

    async def evict(self, ns: str, max_entries: int | None = None,
                    max_bytes: int | None = None) -> int:
        """Drop expired entries, then least recently used ones until within both limits;
        returns how many live entries went."""
        ...

    async def feed_cursor(self, ns: str) -> str:
        """A cursor just after the newest change of a namespace under FEED_PREFIX."""
        ...

    async def changes(self, cursors: Mapping[str, str], limit: int = 1000
                      ) -> dict[str, Changes]:
        """The changes after each namespace's cursor (up to about `limit` in all)."""
        ...


def translate_errors(
    backend: str, *kinds: type[BaseException]
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Decorate a store method so the backend's `kinds` of failure leave it as StoreError
    (the result is a coroutine function, like the `async def` methods of KVStore)."""

    def decorate(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(method)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await method(*args, **kwargs)
            except kinds as exc:
                raise StoreError(f"{backend} store failed: {type(exc).__name__}: {exc}") from exc

        return call

    return decorate


_translated = translate_errors("sqlite", sqlite3.Error)


class SqliteKV:
    """KVStore in the proxy's sqlite database."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self._pruned = 0.0

    async def start(self) -> None:
        """Create the table if needed (adding the LRU columns to an older one)."""
        await self.db.executescript(_SCHEMA)
        await self.db.executescript(_FEED_TRIGGERS)
        async with self.db.execute("PRAGMA table_info(kv)") as cur:
            columns = {row[1] async for row in cur}
        if "used" not in columns:
            await self.db.executescript(_ADD_LRU_COLUMNS)
        await self.db.execute(_LRU_INDEX)

    @_translated
    async def get(self, ns: str, key: str) -> bytes | None:
        """The value, or None when absent or expired."""
        # one round trip to the database thread (a cursor would take three: open, fetch, close)
        rows = list(await self.db.execute_fetchall(
            "SELECT value FROM kv WHERE ns = ? AND key = ? AND (expires IS NULL OR expires > ?)",
            (ns, key, time.time()),
        ))
        return bytes(rows[0][0]) if rows else None

    @_translated
    async def put(self, ns: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store a value, expiring after `ttl` seconds (never when None)."""
        now = time.time()
        expires = now + ttl if ttl is not None else None
        await self.db.execute("INSERT OR REPLACE INTO kv (ns, key, value, expires, used, size) "
                              "VALUES (?, ?, ?, ?, ?, ?)",
                              (ns, key, value, expires, now, len(value)))
        if now - self._pruned > _PRUNE_EVERY_SECONDS:
            self._pruned = now
            await self.db.execute("DELETE FROM kv_feed WHERE ts < ?", (now - FEED_KEEP_SECONDS,))

    @_translated
    async def delete(self, ns: str, key: str) -> None:
        """Remove one entry."""
        await self.db.execute("DELETE FROM kv WHERE ns = ? AND key = ?", (ns, key))

    @_translated
    async def purge(self, ns: str) -> int:
        """Remove a whole namespace; returns how many live entries went."""
        await self.db.execute("DELETE FROM kv WHERE ns = ? AND expires <= ?", (ns, time.time()))
        cur = await self.db.execute("DELETE FROM kv WHERE ns = ?", (ns,))
        return cur.rowcount

    async def scan(self, ns: str) -> AsyncIterator[tuple[str, bytes]]:
        """Every live (key, value) of a namespace."""
        try:
            async with self.db.execute(
                "SELECT key, value FROM kv WHERE ns = ? AND (expires IS NULL OR expires > ?)",
                (ns, time.time()),
            ) as cur:
                async for key, value in cur:
                    yield key, bytes(value)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store failed: {type(exc).__name__}: {exc}") from exc

    @_translated
    async def touch(self, ns: str, key: str) -> None:
        """Mark an entry as just used (it moves to the back of the eviction order)."""
        await self.db.execute("UPDATE kv SET used = ? WHERE ns = ? AND key = ?",
                              (time.time(), ns, key))

    @_translated
    async def usage(self, ns: str) -> KVUsage:
        """Entries and value bytes the namespace holds."""
        (row,) = await self.db.execute_fetchall("SELECT COUNT(*), COALESCE(SUM(size), 0) "
                                                "FROM kv WHERE ns = ?", (ns,))
        return KVUsage(int(row[0]), int(row[1]))

    @_translated
    async def evict(self, ns: str, max_entries: int | None = None,
                    max_bytes: int | None = None) -> int:
        """Drop expired entries, then least recently used ones until within both limits;
        returns how many live entries went."""
        await self.db.execute("DELETE FROM kv WHERE ns = ? AND expires <= ?", (ns, time.time()))
        if max_entries is None and max_bytes is None:
            return 0
        cur = await self.db.execute(_EVICT, (ns, ns, _UNLIMITED if max_entries is None
                                             else max_entries,
                                             _UNLIMITED if max_bytes is None else max_bytes))
        return cur.rowcount

    @_translated
    async def feed_cursor(self, ns: str) -> str:
        """A cursor just after the newest change (of any namespace: ids are global)."""
        (row,) = await self.db.execute_fetchall(_FEED_TOP)
        return str(row[0])

    @_translated
    async def changes(self, cursors: Mapping[str, str], limit: int = 1000
                      ) -> dict[str, Changes]:
        """The changes after each namespace's cursor, read in one query; every cursor
        moves up to the newest change read, so a quiet namespace never falls behind."""
        ((top, oldest),) = await self.db.execute_fetchall(_FEED_SPAN)
        after = {ns: int(cursor) for ns, cursor in cursors.items()}
        low = min(after.values(), default=top)
        rows = [] if low >= top else list(await self.db.execute_fetchall(
            "SELECT id, ns, op, key FROM kv_feed WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
            (low, top, limit)))
        more = len(rows) == limit
        reached = rows[-1][0] if more else top
        found: dict[str, list[tuple[str, str]]] = {ns: [] for ns in after}
        for row_id, ns, op, key in rows:
            if ns in found and row_id > after[ns]:
                found[ns].append((str(op), str(key)))
        return {ns: Changes(str(max(reached, cursor)), found[ns],
                            oldest <= cursor + 1 if oldest is not None else cursor >= top,
                            more)
                for ns, cursor in after.items()}
