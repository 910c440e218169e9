"""Opening the embedded sqlite database (aiosqlite, WAL) shared by the stores."""

from __future__ import annotations

from pathlib import Path

import aiosqlite


async def open_db(path: str) -> aiosqlite.Connection:
    """Open (creating) a sqlite database in WAL mode, safe for several processes."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA busy_timeout=5000")
    return db
