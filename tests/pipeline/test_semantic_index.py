"""Semantic entries held by several processes over one store: following the change feed."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import numpy as np
import pytest

from proxy.embed import DIMENSIONS
from proxy.pipeline.semantic import index as semantic_index
from proxy.pipeline.semantic.index import Entry, Scope, SemanticEntries
from proxy.store.kv import SqliteKV
from proxy.store.sqlite import open_db

SCOPE: Scope = ("alice", "gpt-4o", "", "")


@pytest.fixture(autouse=True)
def no_background_follower(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests call `catch_up()` themselves, at the moments they choose."""
    monkeypatch.setattr(semantic_index, "FEED_POLL_SECONDS", 3600.0)


def vector(seed: int) -> np.ndarray:
    row = np.random.default_rng(seed).standard_normal(DIMENSIONS).astype(np.float32)
    return row / np.linalg.norm(row)


def entry(key: str, answer: str, created: float, expires: float | None = None) -> Entry:
    return Entry(key, SCOPE, f"question {key}", vector(zlib.crc32(key.encode())),
                 {"answer": answer}, created, expires)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await open_db(str(tmp_path / "kv.db"))
    yield conn
    await conn.close()


async def process(db: aiosqlite.Connection) -> SemanticEntries:
    """One process's entries over the shared store, with alice's namespace loaded."""
    kv = SqliteKV(db)
    await kv.start()
    entries = SemanticEntries(kv, max_entries=100)
    await entries.ensure_loaded("alice")
    return entries


async def held(entries: SemanticEntries, key: str) -> Any:
    found = await entries.search(SCOPE, vector(zlib.crc32(key.encode())), 1)
    return found[0][0].completion["answer"] if found and found[0][0].key == key else None


async def test_a_replaced_answer_reaches_the_other_process(db: aiosqlite.Connection) -> None:
    one, two = await process(db), await process(db)
    await one.add(entry("k", "old answer", time.time()), None)
    await two.catch_up()
    assert await held(two, "k") == "old answer"
    await one.add(entry("k", "new answer", time.time() + 1), None)  # x-proxy-cache: refresh
    await two.catch_up()
    assert await held(two, "k") == "new answer"
    await asyncio.gather(one.aclose(), two.aclose())


async def test_an_expired_copy_never_deletes_the_newer_answer(db: aiosqlite.Connection) -> None:
    one, two = await process(db), await process(db)
    await one.add(entry("k", "short-lived", time.time(), expires=time.time() + 0.2), 0.2)
    await two.catch_up()
    await asyncio.sleep(0.3)  # two's copy is past its time ...
    await one.add(entry("k", "fresh", time.time() + 1), None)  # ... and one stored a newer one
    assert await held(two, "k") is None  # the expired copy is not served
    assert await held(two, "k") == "fresh"  # two picked up the newer answer instead
    assert await one.kv.get(one.kv_namespace("alice"), "k") is not None
    await asyncio.gather(one.aclose(), two.aclose())


async def test_an_unreadable_stored_entry_is_skipped_and_following_goes_on(
        db: aiosqlite.Connection) -> None:
    one, two = await process(db), await process(db)
    ns = one.kv_namespace("alice")
    await one.kv.put(ns, "garbage", b'{"format": "from another version"}')
    short = Entry("short", SCOPE, "q", np.ones(8, np.float32), {}, time.time(), None)
    await one.kv.put(ns, "short", short.to_bytes())  # another embedding size
    await one.add(entry("good", "answer", time.time()), None)
    await two.catch_up()
    assert await held(two, "good") == "answer"
    assert await one.purge_namespace("alice") == 3
    await two.catch_up()
    assert await held(two, "good") is None
    three = await process(db)  # a process starting now skips them at load too
    assert three.count("alice") == 0
    await asyncio.gather(one.aclose(), two.aclose(), three.aclose())


class FailingOnce(SqliteKV):
    """A store whose first scan fails (Redis away at start-up, say)."""

    failed = False

    async def scan(self, ns: str) -> Any:
        if not self.failed:
            self.failed = True
            raise ConnectionError("store away")
        async for item in super().scan(ns):
            yield item


async def test_a_failed_load_is_tried_again(db: aiosqlite.Connection) -> None:
    kv = FailingOnce(db)
    await kv.start()
    await kv.put("semantic:alice", "k", entry("k", "answer", time.time()).to_bytes())
    entries = SemanticEntries(kv, max_entries=100)
    with pytest.raises(ConnectionError):
        await entries.ensure_loaded("alice")
    await entries.ensure_loaded("alice")
    assert entries.count("alice") == 1
    await entries.aclose()


async def test_closing_while_loading_leaves_nothing_running(db: aiosqlite.Connection) -> None:
    kv = SqliteKV(db)
    await kv.start()
    entries = SemanticEntries(kv, max_entries=100)
    entries.start_loading("alice")
    await entries.aclose()
    await asyncio.sleep(0)
    assert entries._follower is None


async def test_a_namespace_loaded_during_a_read_is_followed_next_round(
        db: aiosqlite.Connection) -> None:
    one, two = await process(db), await process(db)
    slow_read = asyncio.Event()
    original = two.kv.changes

    async def changes_while_bob_loads(cursors: Any, limit: int = 1000) -> Any:
        found = await original(cursors, limit)
        await two.ensure_loaded("bob")  # finishes while alice's changes are being read
        slow_read.set()
        return found

    two.kv.changes = changes_while_bob_loads  # type: ignore[method-assign]
    await one.add(entry("k", "answer", time.time()), None)
    await two.catch_up()  # no KeyError for bob, alice's change applied
    assert slow_read.is_set() and await held(two, "k") == "answer"
    await asyncio.gather(one.aclose(), two.aclose())


async def test_an_unreadable_value_under_an_expired_key_is_a_miss(
        db: aiosqlite.Connection) -> None:
    one = await process(db)
    await one.add(entry("k", "short-lived", time.time(), expires=time.time() + 0.1), None)
    await one.kv.put(one.kv_namespace("alice"), "k", b'{"format": "unknown"}')
    await asyncio.sleep(0.2)
    assert await held(one, "k") is None
    assert await one.kv.get(one.kv_namespace("alice"), "k") is None
    await one.aclose()


async def test_eviction_follows_every_processs_hits(db: aiosqlite.Connection) -> None:
    one, two = await process(db), await process(db)
    one.max_entries = two.max_entries = 2
    await one.add(entry("k1", "first", time.time()), None)
    await one.add(entry("k2", "second", time.time()), None)
    await two.catch_up()
    [(hit, _)] = await two.search(SCOPE, vector(zlib.crc32(b"k1")), 1)
    await two.touch(hit)  # k1 is used on two; one never saw that hit
    await one.add(entry("k3", "third", time.time()), None)  # one over max_entries
    await two.catch_up()
    for process_entries in (one, two):
        assert [await held(process_entries, k) for k in ("k1", "k2", "k3")] == [
            "first", None, "third"]
    await asyncio.gather(one.aclose(), two.aclose())
