"""ThreadStore in the proxy's sqlite database (tables `thread_objects`, `thread_locks`)."""

from __future__ import annotations

import time
from typing import Any

import aiosqlite
import orjson

from proxy.store.threads_store import Kind, Page, PageQuery, from_before, make_page

_SCHEMA = """
CREATE TABLE IF NOT EXISTS thread_objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL,
    parent TEXT NOT NULL, thread_id TEXT NOT NULL, body BLOB NOT NULL,
    UNIQUE (owner, id)
);
CREATE INDEX IF NOT EXISTS thread_objects_list ON thread_objects (owner, kind, parent, seq);
CREATE INDEX IF NOT EXISTS thread_objects_thread ON thread_objects (owner, thread_id);
CREATE TABLE IF NOT EXISTS thread_locks (
    owner TEXT NOT NULL, thread_id TEXT NOT NULL, run_id TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (owner, thread_id)
) WITHOUT ROWID;
"""


class SqliteThreadStore:
    """Objects as JSON rows; list order is the autoincrement `seq`."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def start(self) -> None:
        """Create the tables if needed."""
        await self.db.executescript(_SCHEMA)

    async def insert(self, owner: str, kind: Kind, obj: dict[str, Any], parent: str = "",
                     thread_id: str = "") -> None:
        """Store a new object at the end of its list."""
        await self.db.execute(
            "INSERT INTO thread_objects (owner, id, kind, parent, thread_id, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (owner, obj["id"], kind, parent, thread_id, orjson.dumps(obj)))

    async def update(self, owner: str, kind: Kind, obj: dict[str, Any]) -> bool:
        """Replace a stored object's body (keeping its place); False when it is gone."""
        cur = await self.db.execute(
            "UPDATE thread_objects SET body = ? WHERE owner = ? AND id = ? AND kind = ?",
            (orjson.dumps(obj), owner, obj["id"], kind))
        return cur.rowcount > 0

    async def get(self, owner: str, kind: Kind, obj_id: str) -> dict[str, Any] | None:
        """The object, or None when absent or owned by someone else."""
        async with self.db.execute(
            "SELECT body FROM thread_objects WHERE owner = ? AND id = ? AND kind = ?",
            (owner, obj_id, kind)) as cur:
            row = await cur.fetchone()
        return orjson.loads(row[0]) if row else None

    async def delete(self, owner: str, kind: Kind, obj_id: str) -> bool:
        """Remove one object; False when there was none."""
        cur = await self.db.execute(
            "DELETE FROM thread_objects WHERE owner = ? AND id = ? AND kind = ?",
            (owner, obj_id, kind))
        return cur.rowcount > 0

    async def page(self, owner: str, kind: Kind, parent: str, query: PageQuery) -> Page:
        """One page of a list."""
        where = ["owner = ?", "kind = ?", "parent = ?"]
        args: list[Any] = [owner, kind, parent]
        newer, older = ("after", "before") if query.order == "asc" else ("before", "after")
        for cursor, op in ((getattr(query, newer), ">"), (getattr(query, older), "<")):
            if cursor is not None:
                where.append(f"seq {op} (SELECT seq FROM thread_objects WHERE owner = ? "
                             "AND id = ? AND kind = ? AND parent = ?)")
                args += [owner, cursor, kind, parent]
        if query.match is not None:
            where.append("json_extract(body, ?) = ?")
            args += [f"$.{query.match[0]}", query.match[1]]
        ascending = (query.order == "asc") != from_before(query)
        sql = (f"SELECT body FROM thread_objects WHERE {' AND '.join(where)} "
               f"ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?")
        async with self.db.execute(sql, (*args, query.limit + 1)) as cur:
            rows = await cur.fetchall()
        return make_page([orjson.loads(row[0]) for row in rows], query)

    async def delete_thread(self, owner: str, thread_id: str) -> bool:
        """Remove a thread with its messages, runs, steps and lock."""
        cur = await self.db.execute(
            "DELETE FROM thread_objects WHERE owner = ? AND thread_id = ?", (owner, thread_id))
        await self.db.execute("DELETE FROM thread_locks WHERE owner = ? AND thread_id = ?",
                              (owner, thread_id))
        return cur.rowcount > 0

    async def claim(self, owner: str, thread_id: str, run_id: str, ttl: float) -> str | None:
        """Lock the thread for `run_id` (or extend its lock); else return the holder."""
        now = time.time()
        await self.db.execute(
            "INSERT INTO thread_locks (owner, thread_id, run_id, expires) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (owner, thread_id) DO UPDATE SET run_id = excluded.run_id, "
            "expires = excluded.expires "
            "WHERE thread_locks.run_id = excluded.run_id OR thread_locks.expires < ?",
            (owner, thread_id, run_id, now + ttl, now))
        holder = await self.holder(owner, thread_id)
        return None if holder == run_id else holder

    async def release(self, owner: str, thread_id: str, run_id: str) -> None:
        """Drop the thread's lock if `run_id` holds it."""
        await self.db.execute(
            "DELETE FROM thread_locks WHERE owner = ? AND thread_id = ? AND run_id = ?",
            (owner, thread_id, run_id))

    async def holder(self, owner: str, thread_id: str) -> str | None:
        """The run holding the thread's lock, if any."""
        async with self.db.execute(
            "SELECT run_id FROM thread_locks WHERE owner = ? AND thread_id = ? AND expires > ?",
            (owner, thread_id, time.time())) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None
