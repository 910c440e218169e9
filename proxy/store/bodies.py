"""Opt-in body log: the messages and the answer of requests from keys with `log_bodies`.

Kept apart from the ledger (which never holds message text) so it can be wiped or
access-controlled on its own. Rows are queued by `record()` and written by the
ledger's flusher (`Ledger.after_flush`), in one transaction per batch.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import aiosqlite


@dataclass(slots=True)
class BodyRecord:
    """One logged conversation turn: the request's messages (JSON) and the answer text."""

    request_id: str
    ts: float
    tenant: str
    model: str
    messages: str
    response: str


_COLUMNS = [f.name for f in fields(BodyRecord)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS bodies (
    request_id TEXT, ts REAL, tenant TEXT, model TEXT, messages TEXT, response TEXT
);
CREATE INDEX IF NOT EXISTS bodies_ts ON bodies (ts);
"""
_INSERT = (f"INSERT INTO bodies ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_COLUMNS))})")


class BodyLog:
    """Batched writer and reader of logged request/answer bodies in sqlite."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self._pending: list[BodyRecord] = []

    async def start(self) -> None:
        """Create the table."""
        await self.db.executescript(_SCHEMA)

    def record(self, entry: BodyRecord) -> None:
        """Queue a row; never blocks."""
        self._pending.append(entry)

    async def flush(self) -> None:
        """Write every queued row now (kept for the next try if the write fails)."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        try:
            await self.db.executemany(_INSERT, [astuple(r) for r in rows])
        except Exception:
            self._pending[:0] = rows
            raise

