"""One ledger across replicas: rows travel between hosts through a Redis stream.

With `backend = "redis"` every host still writes its own rows to its sqlite ledger
(the request path never waits on Redis). A background task per process ships the
rows this host wrote to the stream `PREFIX:ledger` and copies the rows other hosts
shipped into the local ledger, so stats, recommendations, exports and the dashboard
of any replica cover all of them, a second or so behind.

Both directions are idempotent, so nothing needs a lock across processes or hosts:
a copied row carries its origin (the host's sqlite, named once at random) and its
rowid there, and a unique index on that pair ignores a row that arrives twice (a
worker that shipped and died before recording it, two `--workers` of one host
pulling the same entries). What is shipped and seen is recorded in sqlite, so a
restart resumes where it stopped and an outage of Redis only delays the rows.
The stream keeps the last `ledger_stream_max` rows (approximate trimming): a host
that joins later, or comes back after more than that many rows, gets that tail.
Metrics and the request log stay per process (Prometheus adds replicas up itself);
the body log stays on the host that served the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import fields
from typing import Any

import aiosqlite
import orjson
from redis.asyncio import Redis

from proxy.config import StorageConfig
from proxy.store.ledger import LedgerEntry
from proxy.store.redis_client import fail_fast_client, read_streams
from proxy.store.sqlite import open_db

log = logging.getLogger("proxy.ledger")
_ENTRY_COLUMNS = [f.name for f in fields(LedgerEntry)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_sync (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS ledger_origin ON ledger (origin, origin_rowid)
    WHERE origin IS NOT NULL;
"""
_ORIGIN_COLUMNS = {"origin": "TEXT", "origin_rowid": "INTEGER"}
_SELECT_LOCAL = (f"SELECT rowid, {', '.join(_ENTRY_COLUMNS)} FROM ledger "
                 "WHERE origin IS NULL AND rowid > ? ORDER BY rowid LIMIT ?")
_ADVANCE_SHIPPED = ("INSERT INTO ledger_sync VALUES ('shipped_rowid', ?1) ON CONFLICT (name) "
                    "DO UPDATE SET value = MAX(CAST(value AS INTEGER), ?1)")
_SHIP_LOCK_MS = 10_000
# Delete the ship lock only if this worker still holds it.
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
_INSERT_COPY = (f"INSERT OR IGNORE INTO ledger ({', '.join(_ENTRY_COLUMNS)}, origin, "
                f"origin_rowid) VALUES ({', '.join('?' * (len(_ENTRY_COLUMNS) + 2))})")


def _stream_id(text: str) -> tuple[int, int]:
    millis, _, seq = text.partition("-")
    return int(millis), int(seq or 0)


class LedgerSync:
    """Ships this host's ledger rows to a Redis stream and copies the other hosts' rows."""

    def __init__(self, sqlite_path: str, client: Redis, prefix: str, *,
                 max_stream: int = 100_000, interval: float = 0.5, batch: int = 500) -> None:
        self.sqlite_path = sqlite_path
        self.client = client
        self.stream = f"{prefix}ledger"
        self.max_stream = max_stream
        self.interval = interval
        self.batch = batch
        self.origin = ""
        self._db: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._unlock = client.register_script(_UNLOCK)

    async def start(self) -> None:
        """Add the origin columns and the sync table, name this host, start the task."""
        db = self._db = await open_db(self.sqlite_path)
        async with db.execute("PRAGMA table_info(ledger)") as cur:
            present = {row[1] for row in await cur.fetchall()}
        for name, sql_type in _ORIGIN_COLUMNS.items():
            if name not in present:
                try:
                    await db.execute(f"ALTER TABLE ledger ADD COLUMN {name} {sql_type}")
                except aiosqlite.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # not just another worker first
                        await db.close()
                        raise
        await db.executescript(_SCHEMA)
        await db.execute("INSERT OR IGNORE INTO ledger_sync VALUES ('origin', ?)",
                         (secrets.token_hex(8),))
        self.origin = await self._get("origin", "")
        self._task = asyncio.create_task(self._run(), name="ledger-sync")

    async def _get(self, name: str, default: str) -> str:
        assert self._db is not None
        async with self._db.execute("SELECT value FROM ledger_sync WHERE name = ?",
                                    (name,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else default

    async def _set(self, name: str, value: str) -> None:
        assert self._db is not None
        await self._db.execute("INSERT OR REPLACE INTO ledger_sync VALUES (?, ?)", (name, value))

    async def ship(self) -> int:
        """Send the next batch of rows this host wrote to the stream; how many went.

        The workers of one host (one sqlite, one origin) take turns through a short Redis
        lock, so the stream does not carry their rows several times over."""
        assert self._db is not None
        lock, holder = f"{self.stream}:ship:{self.origin}", secrets.token_hex(8)
        if not await self.client.set(lock, holder, nx=True, px=_SHIP_LOCK_MS):
            return 0  # another worker of this host is shipping
        try:
            shipped = int(await self._get("shipped_rowid", "0"))
            async with self._db.execute(_SELECT_LOCAL, (shipped, self.batch)) as cur:
                rows = list(await cur.fetchall())  # aiosqlite types it as an Iterable
            if not rows:
                return 0
            pipe = self.client.pipeline(transaction=False)
            for rowid, *values in rows:
                pipe.xadd(self.stream,
                          {"o": self.origin, "r": rowid,
                           "row": orjson.dumps(dict(zip(_ENTRY_COLUMNS, values)))},
                          maxlen=self.max_stream, approximate=True)
            await pipe.execute()
            await self._db.execute(_ADVANCE_SHIPPED, (int(rows[-1][0]),))
            return len(rows)
        finally:
            await self._unlock(keys=[lock], args=[holder])

    async def pull(self) -> int:
        """Copy the next batch of the other hosts' rows into the local ledger; how many
        stream entries were read."""
        assert self._db is not None
        seen = await self._get("seen_id", "0-0")
        answer = await self.client.xread({self.stream: seen}, count=self.batch)
        entries = read_streams(answer).get(self.stream, [])
        if not entries:
            return 0
        copies = []
        for entry_id, entry in entries:
            try:
                origin = entry[b"o"].decode()
                if origin != self.origin:
                    row: dict[str, Any] = orjson.loads(entry[b"row"])
                    copies.append([row.get(c) for c in _ENTRY_COLUMNS]
                                  + [origin, int(entry[b"r"])])
            except (KeyError, ValueError, UnicodeDecodeError) as exc:  # never block the rest
                log.error("skipping unreadable ledger stream entry %s: %s", entry_id, exc)
        last = entries[-1][0].decode()
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            await self._db.executemany(_INSERT_COPY, copies)
            if _stream_id(last) > _stream_id(await self._get("seen_id", "0-0")):
                await self._set("seen_id", last)
            await self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(Exception):  # a COMMIT cut short by a cancel
                    await self._db.execute("ROLLBACK")
            raise
        return len(entries)

    async def sync(self) -> None:
        """Ship and pull until both are caught up."""
        while await self.ship() == self.batch:
            pass
        while await self.pull() == self.batch:
            pass

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
                if self._failing:
                    log.warning("ledger sync through redis works again")
                self._failing = False
            except Exception as exc:  # Redis away or sqlite busy: rows wait, nothing is lost
                if not self._failing:
                    log.error("ledger sync through redis failed (%s: %s); retrying every "
                              "%.1f s", type(exc).__name__, exc, self.interval)
                self._failing = True
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        """Stop syncing, ship what this host wrote last (if Redis answers within a few
        seconds; else it goes at the next start) and close the connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)
        try:
            async with asyncio.timeout(5):
                while await self.ship() == self.batch:
                    pass
        except Exception as exc:
            log.warning("last ledger rows not shipped at shutdown (%s); they go at the next "
                        "start", exc)
        if self._db is not None:
            await self._db.close()
        await self.client.aclose()


async def start_ledger_sync(storage: StorageConfig) -> LedgerSync | None:
    """Share the ledger through Redis (backend redis), or None when it cannot be: an
    in-memory sqlite ledger has no second connection to read it from."""
    if storage.sqlite_path == ":memory:":
        log.warning("ledger rows are not shared across replicas: sqlite_path is :memory:")
        return None
    sync = LedgerSync(storage.sqlite_path,
                      fail_fast_client(storage.redis_url, storage.redis_timeout),
                      storage.redis_prefix, max_stream=storage.ledger_stream_max)
    await sync.start()
    return sync
