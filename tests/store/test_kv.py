"""KVStore behaviour, the same table for both backends (sqlite file, real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from proxy.store.kv import FEED_PREFIX, KVStore, KVUsage, SqliteKV, StoreError
from proxy.store.redis_kv import RedisKV
from proxy.store.sqlite import open_db
from proxy.testing import drop_redis_prefix, redis_test_prefix

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["sqlite", "redis"])
async def kv(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KVStore]:
    """A fresh store of each backend (redis under a random prefix, removed afterwards)."""
    if request.param == "sqlite":
        db = await open_db(str(tmp_path / "kv.db"))
        store = SqliteKV(db)
        await store.start()
        yield store
        await db.close()
        return
    client = redis.asyncio.from_url(REDIS_URL)
    prefix = redis_test_prefix()
    yield RedisKV(client, prefix)
    await client.aclose()
    drop_redis_prefix(prefix)


async def keys_of(kv: KVStore, ns: str) -> list[str]:
    return sorted([key async for key, _ in kv.scan(ns)])


async def test_get_returns_what_put_stored(kv: KVStore) -> None:
    await kv.put("a", "k", b"one")
    assert await kv.get("a", "k") == b"one"


async def test_missing_key_reads_none(kv: KVStore) -> None:
    assert await kv.get("a", "nothing") is None


async def test_namespaces_do_not_share_keys(kv: KVStore) -> None:
    await kv.put("a", "k", b"one")
    await kv.put("b", "k", b"two")
    assert (await kv.get("a", "k"), await kv.get("b", "k")) == (b"one", b"two")


async def test_put_replaces_the_value(kv: KVStore) -> None:
    await kv.put("a", "k", b"old")
    await kv.put("a", "k", b"newer")
    assert await kv.get("a", "k") == b"newer"
    assert await kv.usage("a") == KVUsage(1, 5)


@pytest.mark.parametrize("ttl", [-1, 0])
async def test_entry_born_expired_is_absent(kv: KVStore, ttl: float) -> None:
    await kv.put("a", "k", b"x", ttl=ttl)
    assert await kv.get("a", "k") is None
    assert await keys_of(kv, "a") == []


async def test_entry_expires_after_its_ttl(kv: KVStore) -> None:
    await kv.put("a", "short", b"x", ttl=0.05)
    await kv.put("a", "long", b"y", ttl=60)
    await asyncio.sleep(0.2)
    assert await kv.get("a", "short") is None
    assert await kv.get("a", "long") == b"y"
    assert await kv.evict("a") == 0  # expired entries leave without counting as evicted
    assert await kv.usage("a") == KVUsage(1, 1)


async def test_delete_removes_one_entry(kv: KVStore) -> None:
    await kv.put("a", "k", b"x")
    await kv.put("a", "j", b"y")
    await kv.delete("a", "k")
    assert await keys_of(kv, "a") == ["j"]
    assert await kv.usage("a") == KVUsage(1, 1)


async def test_scan_lists_live_entries_of_one_namespace(kv: KVStore) -> None:
    await kv.put("a", "k1", b"1")
    await kv.put("a", "k2", b"2", ttl=60)
    await kv.put("a", "gone", b"x", ttl=-1)
    await kv.put("b", "other", b"3")
    assert sorted([(k, v) async for k, v in kv.scan("a")]) == [("k1", b"1"), ("k2", b"2")]


async def test_purge_removes_a_namespace_and_counts_live_entries(kv: KVStore) -> None:
    await kv.put("a", "k", b"one")
    await kv.put("a", "j", b"two")
    await kv.put("a", "gone", b"x", ttl=-1)
    await kv.put("b", "k", b"kept")
    assert await kv.purge("a") == 2
    assert await keys_of(kv, "a") == [] and await kv.usage("a") == KVUsage(0, 0)
    assert await kv.get("b", "k") == b"kept"


async def test_usage_counts_entries_and_value_bytes(kv: KVStore) -> None:
    await kv.put("a", "k", b"12345")
    await kv.put("a", "j", b"123")
    await kv.put("b", "k", b"1")
    assert await kv.usage("a") == KVUsage(2, 8)


@pytest.mark.parametrize(
    ("max_entries", "max_bytes", "kept"),
    [
        (2, None, ["k2", "k3"]),
        (None, 25, ["k2", "k3"]),
        (3, 10, ["k3"]),
        (None, None, ["k1", "k2", "k3"]),
        (0, None, []),
    ],
)
async def test_evict_keeps_the_most_recently_used_within_limits(
        kv: KVStore, max_entries: int | None, max_bytes: int | None, kept: list[str]) -> None:
    for name in ("k1", "k2", "k3"):
        await kv.put("a", name, b"x" * 10)
    await kv.put("b", "k1", b"other namespace")
    evicted = await kv.evict("a", max_entries, max_bytes)
    assert await keys_of(kv, "a") == kept
    assert evicted == 3 - len(kept)
    assert await kv.usage("a") == KVUsage(len(kept), 10 * len(kept))
    assert await kv.get("b", "k1") == b"other namespace"


async def test_touch_moves_an_entry_to_the_back_of_the_eviction_order(kv: KVStore) -> None:
    for name in ("k1", "k2", "k3"):
        await kv.put("a", name, b"x")
    await kv.touch("a", "k1")
    await kv.evict("a", max_entries=2)
    assert await keys_of(kv, "a") == ["k1", "k3"]


async def test_touch_of_a_missing_key_creates_nothing(kv: KVStore) -> None:
    await kv.touch("a", "nothing")
    assert await kv.usage("a") == KVUsage(0, 0)


async def test_unreachable_redis_raises_store_error() -> None:
    client = redis.asyncio.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(StoreError, match="redis store failed"):
        await RedisKV(client, "x:").get("a", "k")
    await client.aclose()


async def test_older_sqlite_table_gains_the_lru_columns(tmp_path: Path) -> None:
    db = await open_db(str(tmp_path / "old.db"))
    await db.execute("CREATE TABLE kv (ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
                     " expires REAL, PRIMARY KEY (ns, key)) WITHOUT ROWID")
    await db.execute("INSERT INTO kv VALUES ('a', 'k', x'0102', NULL)")
    kv = SqliteKV(db)
    await kv.start()
    assert await kv.usage("a") == KVUsage(1, 2)
    assert await kv.get("a", "k") == b"\x01\x02"
    await db.close()


# --- change feed (namespaces under FEED_PREFIX) --------------------------------------------

A, B = FEED_PREFIX + "a", FEED_PREFIX + "b"


async def test_feed_lists_puts_and_removals_of_each_namespace_in_order(kv: KVStore) -> None:
    cursors = {A: await kv.feed_cursor(A), B: await kv.feed_cursor(B)}
    await kv.put(A, "k1", b"1")
    await kv.put(B, "elsewhere", b"x")
    await kv.put("exact", "unfollowed", b"x")
    await kv.put(A, "k2", b"2", ttl=60)
    await kv.delete(A, "k1")
    await kv.put(A, "k3", b"3")
    await kv.evict(A, max_entries=1)  # k2 goes (least recently used)
    await kv.put(A, "k4", b"4")
    await kv.purge(A)
    found = await kv.changes(cursors)
    assert found[A].complete and found[B].complete and not found[A].more
    assert found[A].changes[:6] == [("put", "k1"), ("put", "k2"), ("delete", "k1"),
                                    ("put", "k3"), ("delete", "k2"), ("put", "k4")]
    assert sorted(found[A].changes[6:]) == [("delete", "k3"), ("delete", "k4")]
    assert found[B].changes == [("put", "elsewhere")]


async def test_feed_resumes_from_its_cursor_in_batches(kv: KVStore) -> None:
    cursor = await kv.feed_cursor(A)
    for i in range(5):
        await kv.put(A, f"k{i}", b"v")
    first = (await kv.changes({A: cursor}, limit=3))[A]
    rest = (await kv.changes({A: first.cursor}, limit=3))[A]
    assert first.more and not rest.more
    assert [k for _, k in first.changes + rest.changes] == [f"k{i}" for i in range(5)]
    assert (await kv.changes({A: rest.cursor}))[A].changes == []


async def test_feed_says_so_when_changes_were_dropped(kv: KVStore) -> None:
    cursor = await kv.feed_cursor(A)
    await kv.put(A, "k", b"v")
    if isinstance(kv, SqliteKV):
        await kv.db.execute("DELETE FROM kv_feed")  # pruned (older than FEED_KEEP_SECONDS)
    else:
        assert isinstance(kv, RedisKV)
        await kv.redis.xtrim(kv._feed(A), maxlen=0)  # trimmed past the cursor
    await kv.put(A, "k2", b"v")
    assert not (await kv.changes({A: cursor}))[A].complete
