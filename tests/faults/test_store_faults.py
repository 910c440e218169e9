"""Store faults: a full disk or a locked sqlite database, a stalled or stopped Redis.
Requests keep being answered under the documented policy, no 500, and once the fault
clears the ledger has every row and the shared state holds nothing the fault left behind
(tests/e2e/test_redis_outage.py covers the rpm window and spend across a Redis restart)."""

from __future__ import annotations

import logging
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import openai
import pytest
from limits_support import OwnRedis

from proxy.store import ledger as ledger_module
from proxy.store.ledger import Ledger
from proxy.testing import LiveProxy, sample_entry

from .support import MODEL, RULES, assert_settled, spent_usd


def ask_new(live: LiveProxy, question: str) -> Any:
    """alice asks `question`; the completion, or the APIStatusError it got."""
    try:
        return live.client(timeout=30).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=40)
    except openai.APIStatusError as exc:
        return exc


def until_served(live: LiveProxy, question: str, timeout: float = 20) -> Any:
    """Ask until the answer is a completion (the proxy retries its store with a backoff)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = ask_new(live, question)
        if not isinstance(answer, openai.APIStatusError) or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def failures(caplog: pytest.LogCaptureFixture, text: str) -> int:
    """How many log records so far contain `text`."""
    return sum(text in r.getMessage() for r in caplog.records)


def poll(check: Any, timeout: float = 30) -> bool:
    """Call `check()` until it is true or `timeout` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(check())


def test_a_full_disk_keeps_ledger_rows_until_there_is_room(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "proxy.ledger")
    with LiveProxy(tmp_path, rules=RULES, config={"keys": {"alice": {"budget_usd": 1.0}}}) as live:
        assert not isinstance(ask_new(live, "first"), Exception)
        live.ledger_rows()

        async def limit_pages(pages: int | None) -> None:  # sqlite's own "disk is full"
            db = live.resources.db
            if pages is None:
                async with db.execute("PRAGMA page_count") as cur:
                    (pages,) = await cur.fetchone()  # type: ignore[misc]
            await db.execute(f"PRAGMA max_page_count = {pages}")

        live.run(limit_pages(None))
        answers = [ask_new(live, f"question {i}") for i in range(30)]
        assert poll(lambda: failures(caplog, "ledger write failed"))
        live.run(limit_pages(1 << 30))
        rows = assert_settled(live, 31)
    assert not any(isinstance(a, Exception) for a in answers)
    assert all(r["status"] == 200 for r in rows)
    assert failures(caplog, "ledger write failed") == 1  # one line, not one per flush
    assert failures(caplog, "ledger writes work again") == 1


def test_a_locked_database_delays_ledger_rows_and_loses_none(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "proxy.ledger")
    with LiveProxy(tmp_path) as live:
        live.client().chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "first"}])
        live.ledger_rows()
        other = sqlite3.connect(tmp_path / "proxy.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            for i in range(3):
                live.client().chat.completions.create(model=MODEL, messages=[
                    {"role": "user", "content": f"question {i}"}])
            assert poll(lambda: failures(caplog, "ledger write failed"))
        finally:
            other.execute("ROLLBACK")
            other.close()
        rows = live.wait_ledger_rows(4)
    assert len(rows) == 4 and all(r["status"] == 200 for r in rows)


async def test_rows_kept_through_a_fault_that_never_clears_are_bounded(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ledger_module, "MAX_UNWRITTEN", 5)
    db = await aiosqlite.connect(":memory:", isolation_level=None)
    ledger = Ledger(db, interval=3600)
    await ledger.start()
    await db.execute("ALTER TABLE ledger RENAME TO away")  # every insert fails now
    for i in range(8):
        ledger.record(sample_entry(request_id=f"r{i}"))
    await ledger.flush()
    await db.execute("ALTER TABLE away RENAME TO ledger")
    rows = await ledger.rows()
    await ledger.close()
    await db.close()
    assert [r["request_id"] for r in rows] == ["r3", "r4", "r5", "r6", "r7"]
    assert failures(caplog, "dropped the 3 oldest unwritten rows") == 1


@pytest.fixture
def redis_server() -> Iterator[OwnRedis]:
    """A redis-server of the test's own, resumed and killed at the end."""
    server = OwnRedis()
    server.start()
    yield server
    if server.proc is not None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


def on_redis(tmp_path: Path, server: OwnRedis, policy: str) -> LiveProxy:
    """The fault pipeline on `server`; alice runs one request at a time."""
    return LiveProxy(tmp_path, rules=RULES, config={
        "storage": {"backend": "redis", "redis_url": server.url, "redis_failure": policy,
                    "redis_timeout": 0.2, "redis_prefix": "faults:"},
        "keys": {"alice": {"max_concurrent": 1, "budget_usd": 1.0}}})


@pytest.mark.parametrize(("policy", "during"), [("open", "served"), ("closed", 503)])
def test_a_stalled_redis_applies_the_policy_and_leaves_no_slot_or_hold_behind(
        tmp_path: Path, redis_server: OwnRedis, policy: str, during: Any) -> None:
    assert redis_server.proc is not None
    with on_redis(tmp_path, redis_server, policy) as live:
        assert not isinstance(ask_new(live, "before"), Exception)
        redis_server.proc.send_signal(signal.SIGSTOP)  # alive, answering nothing
        answers = [ask_new(live, f"during {i}") for i in range(3)]
        redis_server.proc.send_signal(signal.SIGCONT)  # it now runs what was queued
        served = [until_served(live, f"after {i}") for i in range(3)]
        rows = live.wait_ledger_rows(7)
        # what was settled meanwhile reaches the shared spend once Redis is back
        assert poll(lambda: spent_usd(live) == pytest.approx(sum(r["cost_usd"] for r in rows)))
    seen = ["served" if not isinstance(a, Exception) else a.status_code for a in answers]
    assert seen == [during] * 3
    # a call that timed out but ran in Redis held alice's only slot for its 10-minute lease
    assert not any(isinstance(a, Exception) for a in served)
    assert len(rows) >= 7 and not any(r["status"] >= 500 and r["status"] != 503 for r in rows)


def test_a_stopped_redis_turns_the_cache_into_misses_until_it_is_back(
        tmp_path: Path, redis_server: OwnRedis) -> None:
    with on_redis(tmp_path, redis_server, "open") as live:
        redis_server.stop()
        down = [ask_new(live, "while down") for _ in range(2)]
        redis_server.start()
        until_served(live, "after")
        poll(lambda: not isinstance(ask_new(live, "cached?"), Exception)
             and live.ledger_rows()[-1]["stage"] == "exact_cache", timeout=20)
        stages = [r["stage"] for r in live.ledger_rows()]
    assert not any(isinstance(a, Exception) for a in down)
    assert stages[:2] == ["upstream", "upstream"]  # nothing could be cached meanwhile
    assert stages[-1] == "exact_cache"  # and the cache works again
