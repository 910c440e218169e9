"""CacheEntries: per-tenant namespaces, write-behind with read-your-writes, LRU bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.store.cache_entries import RECOUNT_EVERY, CacheEntries, SizeLimits
from proxy.store.kv import KVUsage, SqliteKV
from proxy.store.sqlite import open_db


@pytest.fixture
async def kv(tmp_path: Path) -> AsyncIterator[SqliteKV]:
    db = await open_db(str(tmp_path / "kv.db"))
    store = SqliteKV(db)
    await store.start()
    yield store
    await db.close()


async def test_queued_write_is_readable_before_it_lands(kv: SqliteKV) -> None:
    entries = CacheEntries(kv, "exact")
    entries.put("alice", "k", b"v", ttl=60)
    assert await entries.get("alice", "k") == b"v"
    assert await kv.get("exact:alice", "k") is None  # not yet written
    await entries.aclose()
    assert await kv.get("exact:alice", "k") == b"v"


async def test_queued_delete_hides_the_stored_entry(kv: SqliteKV) -> None:
    await kv.put("exact:alice", "k", b"v")
    entries = CacheEntries(kv, "exact")
    entries.delete("alice", "k")
    assert await entries.get("alice", "k") is None
    await entries.aclose()
    assert await kv.get("exact:alice", "k") is None


async def test_tenant_namespaces_are_apart(kv: SqliteKV) -> None:
    entries = CacheEntries(kv, "exact")
    entries.put("alice", "k", b"a", ttl=None)
    await entries.drain()
    assert await entries.get("bob", "k") is None
    await entries.aclose()


async def test_purge_namespace_drops_queued_and_stored_entries(kv: SqliteKV) -> None:
    entries = CacheEntries(kv, "exact")
    entries.put("alice", "old", b"1", ttl=None)
    await entries.drain()
    entries.put("alice", "queued", b"2", ttl=None)
    entries.put("bob", "k", b"3", ttl=None)
    assert await entries.purge_namespace("alice") == 2
    assert await entries.get("alice", "queued") is None
    assert await entries.get("bob", "k") == b"3"
    await entries.aclose()


async def test_namespace_over_its_limit_is_trimmed_to_ninety_percent(kv: SqliteKV) -> None:
    entries = CacheEntries(kv, "exact")
    for i in range(21):
        entries.put("alice", f"k{i:02}", b"x", ttl=None, limits=SizeLimits(max_entries=20))
    await entries.drain()
    assert await kv.usage("exact:alice") == KVUsage(18, 18)
    assert await entries.get("alice", "k20") == b"x" and await entries.get("alice", "k00") is None
    await entries.aclose()


async def test_full_queue_drops_writes(kv: SqliteKV) -> None:
    entries = CacheEntries(kv, "exact", max_queue=1)
    assert entries.put("alice", "a", b"1", ttl=None)
    assert not entries.put("alice", "b", b"2", ttl=None)
    assert entries.dropped == 1 and await entries.get("alice", "b") is None
    await entries.aclose()


@pytest.mark.parametrize(("limits", "entries", "size", "over", "low"), [
    (SizeLimits(), 10**9, 10**12, False, (None, None)),
    (SizeLimits(max_entries=2), 3, 0, True, (2, None)),
    (SizeLimits(max_entries=100), 100, 0, False, (90, None)),
    (SizeLimits(max_bytes=1000), 1, 1001, True, (None, 900)),
])
def test_size_limits(limits: SizeLimits, entries: int, size: int, over: bool,
                     low: tuple[int | None, int | None]) -> None:
    assert limits.exceeded_by(entries, size) is over
    assert limits.low_water() == low


class CountingKV(SqliteKV):
    """SqliteKV that counts its (namespace-scanning) usage queries."""

    usage_queries = 0

    async def usage(self, ns: str) -> KVUsage:
        self.usage_queries += 1
        return await super().usage(ns)


async def test_writes_within_the_limits_do_not_scan_the_namespace_each_time(
        kv: SqliteKV) -> None:
    counting = CountingKV(kv.db)
    entries = CacheEntries(counting, "exact")
    for i in range(2 * RECOUNT_EVERY):
        entries.put("alice", f"k{i}", b"x", ttl=None, limits=SizeLimits(max_entries=10_000))
    await entries.drain()
    assert counting.usage_queries == 2
    await entries.aclose()


async def test_entries_written_by_another_process_are_counted_at_the_next_recount(
        kv: SqliteKV) -> None:
    entries = CacheEntries(kv, "exact")
    limits = SizeLimits(max_entries=150)
    entries.put("alice", "first", b"x", ttl=None, limits=limits)
    await entries.drain()
    for i in range(200):  # another worker's writes, unseen by this process's tally
        await kv.put("exact:alice", f"other{i}", b"x")
    for i in range(RECOUNT_EVERY):
        entries.put("alice", f"k{i}", b"x", ttl=None, limits=limits)
    await entries.drain()
    assert (await kv.usage("exact:alice")).entries == 135
    await entries.aclose()
