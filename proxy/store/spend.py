"""Budget spend per key and period in sqlite, written in batches off the request path.

`add()` only accumulates a delta in memory; a background task adds the deltas to the
table every `interval` seconds, and `close()` writes what is left, so a clean
shutdown loses nothing. Deltas (not totals) are written, so processes sharing the
file never overwrite each other's spend. Alert markers live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

import aiosqlite

log = logging.getLogger("proxy.spend")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_spend (
    key TEXT NOT NULL, period TEXT NOT NULL, spent_nanos INTEGER NOT NULL,
    PRIMARY KEY (key, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS once_markers (marker TEXT PRIMARY KEY, expires REAL NOT NULL);
"""
_ADD = ("INSERT INTO budget_spend (key, period, spent_nanos) VALUES (?, ?, ?) "
        "ON CONFLICT (key, period) DO UPDATE SET spent_nanos = spent_nanos + excluded.spent_nanos")


class SqliteSpend:
    """Spend totals in the proxy's sqlite database."""

    def __init__(self, db: aiosqlite.Connection, interval: float = 0.5) -> None:
        self.db = db
        self.interval = interval
        self._pending: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> dict[tuple[str, str], int]:
        """Create the tables, start the writer, and return every stored total."""
        await self.db.executescript(_SCHEMA)
        self._task = asyncio.create_task(self._run(), name="spend-writer")
        async with self.db.execute("SELECT key, period, spent_nanos FROM budget_spend") as cur:
            return {(k, p): int(n) for k, p, n in await cur.fetchall()}

    def add(self, key: str, period: str, nanos: int) -> None:
        """Queue spend to be added; never blocks."""
        if nanos:
            self._pending[(key, period)] += nanos

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            await self.flush()

    async def flush(self) -> None:
        """Write the queued deltas now (kept for the next try if the write fails)."""
        if not self._pending:
            return
        rows, self._pending = self._pending, defaultdict(int)
        try:
            await self.db.executemany(_ADD, [(k, p, n) for (k, p), n in rows.items()])
        except Exception:
            log.exception("spend write failed; %d totals kept for retry", len(rows))
            for pair, nanos in rows.items():
                self._pending[pair] += nanos

    async def claim(self, marker: str, ttl_seconds: float) -> bool:
        """Insert `marker` unless a live one exists; True when this call inserted it."""
        now = time.time()
        await self.db.execute("DELETE FROM once_markers WHERE marker = ? AND expires <= ?",
                              (marker, now))
        cur = await self.db.execute("INSERT OR IGNORE INTO once_markers VALUES (?, ?)",
                                    (marker, now + ttl_seconds))
        return cur.rowcount == 1

    async def close(self) -> None:
        """Stop the writer and write what is left."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.flush()
