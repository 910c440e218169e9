"""Ledger: batched rows land whole and in order, and a failed write is retried once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import astuple
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from proxy.store.ledger import Ledger, LedgerEntry
from proxy.store.sqlite import open_db
from proxy.testing import sample_entry


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await open_db(str(tmp_path / "ledger.db"))
    yield conn
    await conn.close()


def entries(n: int) -> list[LedgerEntry]:
    return [sample_entry(request_id=f"req_{i}", ts=1_740_823_200.0 + i, cost_usd=i / 7,
                         latency_ms=i * 0.1, stream=bool(i % 2), tools_sent=None if i % 3
                         else '{"t": 5}') for i in range(n)]


def as_rows(written: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(row.values()) for row in written]


def expected(rows: list[LedgerEntry]) -> list[tuple[Any, ...]]:
    return [tuple(int(v) if isinstance(v, bool) else v for v in astuple(r)) for r in rows]


@pytest.mark.parametrize("n", [0, 1, 3, 32, 45, 75])
async def test_every_recorded_row_is_written_once_in_order(db: aiosqlite.Connection,
                                                           n: int) -> None:
    ledger = Ledger(db)
    await ledger.start()
    for entry in entries(n):
        ledger.record(entry)
    await ledger.close()
    assert as_rows(await ledger.rows()) == expected(entries(n))


async def test_an_older_ledger_gets_the_cached_tokens_column(db: aiosqlite.Connection) -> None:
    await db.execute("CREATE TABLE ledger (request_id TEXT, ts REAL, tenant TEXT, namespace TEXT,"
                     " requested_model TEXT, model TEXT, stage TEXT, prompt_tokens INTEGER,"
                     " completion_tokens INTEGER, cost_usd REAL, baseline_usd REAL,"
                     " latency_ms REAL, status INTEGER, stream INTEGER, source TEXT, trace TEXT,"
                     " error TEXT)")
    await db.execute("INSERT INTO ledger (request_id, ts, prompt_tokens) VALUES ('old', 1, 5)")
    ledger = Ledger(db)
    await ledger.start()
    ledger.record(sample_entry(request_id="new", ts=2.0, prompt_tokens=2000, cached_tokens=1024))
    await ledger.close()
    rows = {r["request_id"]: r for r in await ledger.rows()}
    assert (rows["old"]["cached_tokens"], rows["new"]["cached_tokens"]) == (0, 1024)


class FailingInsert:
    """A connection whose `fail_at`-th INSERT raises (as a locked database would)."""

    def __init__(self, db: aiosqlite.Connection, fail_at: int) -> None:
        self.db, self.fail_at, self.inserts = db, fail_at, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.startswith("INSERT"):
            self.inserts += 1
            if self.inserts == self.fail_at:
                async def fail() -> None:
                    raise sqlite3.OperationalError("database is locked")
                return fail()
        return self.db.execute(sql, params)


async def test_rows_after_a_failed_insert_are_retried_without_duplicates(
        db: aiosqlite.Connection) -> None:
    ledger = Ledger(db)
    await ledger.start()
    ledger.db = FailingInsert(db, fail_at=2)  # type: ignore[assignment]
    for entry in entries(45):
        ledger.record(entry)
    await ledger.flush()
    assert len(await ledger.rows()) == 45  # rows() flushes again: the retry
    await ledger.close()
    assert as_rows(await ledger.rows()) == expected(entries(45))


class HeldInsert(FailingInsert):
    """A connection whose `hold_at`-th INSERT waits until `release` is set."""

    def __init__(self, db: aiosqlite.Connection, hold_at: int) -> None:
        super().__init__(db, fail_at=0)
        self.hold_at, self.release = hold_at, asyncio.Event()

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.startswith("INSERT") and self.inserts + 1 == self.hold_at:
            self.inserts += 1

            async def held() -> Any:
                await self.release.wait()
                return await self.db.execute(sql, params)
            return held()
        return super().execute(sql, params)


async def test_rows_include_those_a_running_flush_is_still_writing(
        db: aiosqlite.Connection) -> None:
    ledger = Ledger(db)
    await ledger.start()
    held = HeldInsert(db, hold_at=2)
    ledger.db = held  # type: ignore[assignment]
    for entry in entries(75):
        ledger.record(entry)
    running = asyncio.create_task(ledger.flush())
    while held.inserts < 2:  # the flush wrote its first statement and waits on the second
        await asyncio.sleep(0.001)
    reading = asyncio.create_task(ledger.rows())
    await asyncio.sleep(0.05)
    held.release.set()
    assert len(await reading) == 75
    await running
    await ledger.close()
