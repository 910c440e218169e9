"""The request ledger: one row per request, written in batches off the request path.

`record()` only appends to an in-memory queue; a background task flushes it every
`interval` seconds (or when `batch` rows are waiting) in one transaction, and
`close()` drains what is left, so a clean shutdown loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

import aiosqlite

log = logging.getLogger("proxy.ledger")


@dataclass(slots=True)
class LedgerEntry:
    """What one request cost and what it would have cost."""

    request_id: str
    ts: float
    tenant: str
    namespace: str
    requested_model: str
    model: str
    stage: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    baseline_usd: float
    latency_ms: float
    status: int
    stream: bool
    source: str = "chat"
    trace: str = ""
    error: str | None = None


_COLUMNS = [f.name for f in fields(LedgerEntry)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    request_id TEXT, ts REAL, tenant TEXT, namespace TEXT, requested_model TEXT, model TEXT,
    stage TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL,
    baseline_usd REAL, latency_ms REAL, status INTEGER, stream INTEGER, source TEXT,
    trace TEXT, error TEXT
);
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts);
CREATE INDEX IF NOT EXISTS ledger_tenant_ts ON ledger (tenant, ts);
"""
_ROW = attrgetter(*[f.name for f in fields(LedgerEntry)])
_INSERT = f"INSERT INTO ledger ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


class Ledger:
    """Batched writer and reader of ledger rows in sqlite."""

    def __init__(self, db: aiosqlite.Connection, *, interval: float = 0.2, batch: int = 500):
        self.db = db
        self.interval = interval
        self.batch = batch
        self._pending: list[LedgerEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Create the table and start the flusher."""
        await self.db.executescript(_SCHEMA)
        self._task = asyncio.create_task(self._run(), name="ledger-flusher")

    def record(self, entry: LedgerEntry) -> None:
        """Queue a row; never blocks, never awaits."""
        self._pending.append(entry)
        if len(self._pending) >= self.batch:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write every queued row now."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        try:
            await self.db.executemany(_INSERT, [_ROW(r) for r in rows])
        except Exception:  # keep the rows for the next try rather than lose them
            log.exception("ledger flush failed; %d rows kept for retry", len(rows))
            self._pending[:0] = rows

    async def close(self) -> None:
        """Stop the flusher and write what is left."""
        self._closing = True
        self._wake.set()
        if self._task:
            await self._task
        await self.flush()

    async def rows(self, since: float = 0.0, until: float | None = None,
                   tenant: str | None = None) -> list[dict[str, Any]]:
        """Ledger rows in a time range (optionally one tenant's), oldest first."""
        await self.flush()
        sql = "SELECT * FROM ledger WHERE ts >= ? AND ts < ?"
        args: list[Any] = [since, until if until is not None else time.time() + 1e9]
        if tenant is not None:
            sql += " AND tenant = ?"
            args.append(tenant)
        async with self.db.execute(sql + " ORDER BY ts", args) as cur:
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in await cur.fetchall()]
