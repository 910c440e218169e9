"""SqliteKV: namespaced values with TTL."""

from __future__ import annotations

from pathlib import Path

from proxy.store.kv import SqliteKV
from proxy.store.sqlite import open_db


async def test_values_are_namespaced_expire_and_purge(tmp_path: Path) -> None:
    db = await open_db(str(tmp_path / "kv.db"))
    kv = SqliteKV(db)
    await kv.start()
    await kv.put("a", "k", b"one")
    await kv.put("b", "k", b"two")
    await kv.put("a", "gone", b"x", ttl=-1)
    assert await kv.get("a", "k") == b"one"
    assert await kv.get("b", "k") == b"two"
    assert await kv.get("a", "gone") is None
    assert [k async for k, _ in kv.scan("a")] == ["k"]
    assert await kv.purge("a") == 2
    assert await kv.get("a", "k") is None and await kv.get("b", "k") == b"two"
    await db.close()
