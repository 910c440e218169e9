"""The request ledger: one row per request, written in batches off the request path.

`record()` only appends to an in-memory queue; a background task flushes it every
`interval` seconds (or when `batch` rows are waiting) in one transaction, and
`close()` drains what is left, so a clean shutdown loses nothing.

When sqlite cannot take the rows (disk full, database locked by another process), they
stay in memory and every flush tries again: one ERROR line when writes start failing,
one WARNING when they work again. Past MAX_UNWRITTEN rows the oldest are dropped, with
an ERROR line saying how many, so a fault that never clears cannot exhaust memory.

Observers (metrics, the JSON request log) see every row once, in the flusher,
never on the request path; `after_flush` hooks (the body log) ride the same
flusher. New columns are appended with defaults and added to older databases
by `ALTER TABLE ... ADD COLUMN`, so the field order of LedgerEntry stays stable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
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
    prompt_hash: str | None = None
    max_tokens: int | None = None
    upstream_ms: float | None = None
    tools_sent: str | None = None
    tools_called: str | None = None
    cached_tokens: int = 0


# Columns added after the first release: name -> SQL type, added when missing.
_ADDED_COLUMNS = {"prompt_hash": "TEXT", "max_tokens": "INTEGER", "upstream_ms": "REAL",
                  "tools_sent": "TEXT", "tools_called": "TEXT",
                  "cached_tokens": "INTEGER DEFAULT 0"}
_COLUMNS = [f.name for f in fields(LedgerEntry)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    request_id TEXT, ts REAL, tenant TEXT, namespace TEXT, requested_model TEXT, model TEXT,
    stage TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL,
    baseline_usd REAL, latency_ms REAL, status INTEGER, stream INTEGER, source TEXT,
    trace TEXT, error TEXT, prompt_hash TEXT, max_tokens INTEGER, upstream_ms REAL,
    tools_sent TEXT, tools_called TEXT, cached_tokens INTEGER DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts);
CREATE INDEX IF NOT EXISTS ledger_tenant_ts ON ledger (tenant, ts);
"""
_ROW = attrgetter(*[f.name for f in fields(LedgerEntry)])
Observer = Callable[[Sequence["LedgerEntry"]], None]
# Rows shown to the observers (metrics, the JSON request log: ~20 us a row) between two
# turns of the event loop: 8 rows hold the loop ~0.2 ms, where 64 held it ~1 ms, the
# delay of whichever request arrived meanwhile (a p99 cost at c=1, issue 13).
_NOTIFY_SLICE = 8
# Rows go in as multi-row INSERTs of these sizes (largest first): one statement is one
# transaction, where executemany in autocommit mode would commit every row on its own
# (about 7x the sqlite time per row). Few distinct sizes keep the statements cached, and
# 32 rows x 23 columns stays under sqlite's oldest bound-variable limit (999).
_STATEMENT_ROWS = (32, 8, 2, 1)
MAX_UNWRITTEN = 200_000  # rows kept in memory while sqlite refuses them (~1 KB each)
_INSERTS = {
    n: f"INSERT INTO ledger ({', '.join(_COLUMNS)}) VALUES "
       + ", ".join([f"({', '.join('?' * len(_COLUMNS))})"] * n)
    for n in _STATEMENT_ROWS
}


def _statements(rows: Sequence[LedgerEntry]) -> Iterator[tuple[int, str, list[Any]]]:
    """(offset of the first row, SQL, parameters) of the INSERTs that write `rows`."""
    at = 0
    for size in _STATEMENT_ROWS:
        while len(rows) - at >= size:
            yield at, _INSERTS[size], [v for row in rows[at:at + size] for v in _ROW(row)]
            at += size


class Ledger:
    """Batched writer and reader of ledger rows in sqlite."""

    def __init__(self, db: aiosqlite.Connection, *, interval: float = 0.2, batch: int = 500):
        self.db = db
        self.interval = interval
        self.batch = batch
        self._pending: list[LedgerEntry] = []
        self._unwritten: list[LedgerEntry] = []
        self.observers: list[Observer] = []
        self.after_flush: list[Callable[[], Awaitable[None]]] = []
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False

    async def start(self) -> None:
        """Create the table and start the flusher."""
        await self.db.executescript(_SCHEMA)
        await self._add_missing_columns()
        self._task = asyncio.create_task(self._run(), name="ledger-flusher")

    async def _add_missing_columns(self) -> None:
        async with self.db.execute("PRAGMA table_info(ledger)") as cur:
            present = {row[1] for row in await cur.fetchall()}
        for name, sql_type in _ADDED_COLUMNS.items():
            if name not in present:
                await self.db.execute(f"ALTER TABLE ledger ADD COLUMN {name} {sql_type}")

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
        """Show queued rows to the observers (once) and write every unwritten row now.

        One flush at a time, so a flush returns only once every row recorded before it
        is written (`rows()` relies on that); the observers see rows in slices with the
        event loop free in between, so requests do not wait for a whole batch.
        """
        async with self._flushing:
            if self._pending:
                fresh, self._pending = self._pending, []
                self._unwritten.extend(fresh)
                for at in range(0, len(fresh), _NOTIFY_SLICE):
                    self._notify(fresh[at:at + _NOTIFY_SLICE])
                    await asyncio.sleep(0)
            if self._unwritten:
                rows, self._unwritten = self._unwritten, []
                for at, sql, params in _statements(rows):
                    try:
                        await self.db.execute(sql, params)
                    except Exception:  # keep the rows for the next try rather than lose them
                        self._unwritten[:0] = rows[at:]
                        self._write_failed()
                        break
                else:
                    if self._failing:
                        self._failing = False
                        log.warning("ledger writes work again; %d rows written", len(rows))
            for hook in self.after_flush:
                try:
                    await hook()
                except Exception:
                    log.exception("after-flush hook %r failed", hook)

    def _write_failed(self) -> None:
        """Note a failed write (called in its `except`): log the first, bound what is kept."""
        if not self._failing:
            self._failing = True
            log.exception("ledger write failed; %d rows kept in memory, retried every %gs",
                          len(self._unwritten), self.interval)
        excess = len(self._unwritten) - MAX_UNWRITTEN
        if excess > 0:
            del self._unwritten[:excess]
            log.error("ledger still not writable: dropped the %d oldest unwritten rows "
                      "(more than %d waiting)", excess, MAX_UNWRITTEN)

    def _notify(self, rows: Sequence[LedgerEntry]) -> None:
        for observer in self.observers:
            try:
                observer(rows)
            except Exception:  # an observer's bug must not lose ledger rows
                log.exception("ledger observer %r failed", observer)

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
