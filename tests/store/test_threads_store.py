"""ThreadStore contract, run against sqlite and the real redis-server (random key prefix)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from proxy.store.sqlite import open_db
from proxy.store.threads_redis import RedisThreadStore
from proxy.store.threads_sqlite import SqliteThreadStore
from proxy.store.threads_store import PageQuery, ThreadStore
from proxy.testing import drop_redis_prefix, redis_test_prefix


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ThreadStore]:
    if request.param == "sqlite":
        db = await open_db(str(tmp_path / "threads.db"))
        sqlite_store = SqliteThreadStore(db)
        await sqlite_store.start()
        yield sqlite_store
        await db.close()
        return
    client = redis.asyncio.from_url("redis://127.0.0.1:6379/0")
    prefix = redis_test_prefix()
    yield RedisThreadStore(client, prefix)
    await client.aclose()
    drop_redis_prefix(prefix)


async def _thread_with_messages(store: ThreadStore, owner: str, count: int) -> list[str]:
    await store.insert(owner, "thread", {"id": "thread_1"}, thread_id="thread_1")
    ids = [f"msg_{i}" for i in range(count)]
    for i, mid in enumerate(ids):
        await store.insert(owner, "message", {"id": mid, "run_id": "run_a" if i % 2 else None},
                           parent="thread_1", thread_id="thread_1")
    return ids


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


async def test_objects_are_invisible_to_other_owners(store: ThreadStore) -> None:
    await store.insert("alice", "assistant", {"id": "asst_1", "name": "a"})
    assert await store.get("alice", "assistant", "asst_1") == {"id": "asst_1", "name": "a"}
    assert await store.get("bob", "assistant", "asst_1") is None
    assert await store.delete("bob", "assistant", "asst_1") is False
    assert await store.update("bob", "assistant", {"id": "asst_1", "name": "evil"}) is False
    assert (await store.page("bob", "assistant", "", PageQuery())).items == []


async def test_get_checks_the_kind(store: ThreadStore) -> None:
    await store.insert("alice", "assistant", {"id": "asst_1"})
    assert await store.get("alice", "thread", "asst_1") is None


async def test_update_keeps_list_position(store: ThreadStore) -> None:
    ids = await _thread_with_messages(store, "alice", 3)
    assert await store.update("alice", "message", {"id": ids[0], "edited": True})
    page = await store.page("alice", "message", "thread_1", PageQuery(order="asc"))
    assert _ids(page.items) == ids and page.items[0]["edited"] is True


@pytest.mark.parametrize(
    ("query", "expected", "has_more"),
    [
        (PageQuery(limit=2, order="asc"), [0, 1], True),
        (PageQuery(limit=2, order="desc"), [4, 3], True),
        (PageQuery(limit=2, order="asc", after="msg_1"), [2, 3], True),
        (PageQuery(limit=2, order="desc", after="msg_3"), [2, 1], True),
        (PageQuery(limit=10, order="asc", after="msg_2"), [3, 4], False),
        (PageQuery(limit=2, order="asc", before="msg_4"), [2, 3], True),
        (PageQuery(limit=2, order="desc", before="msg_0"), [2, 1], True),
        (PageQuery(limit=10, order="asc", after="msg_0", before="msg_3"), [1, 2], False),
        (PageQuery(limit=10, order="asc", match=("run_id", "run_a")), [1, 3], False),
        (PageQuery(limit=10, order="asc", after="msg_gone"), [], False),
    ],
)
async def test_pages_follow_openai_cursor_semantics(store: ThreadStore, query: PageQuery,
                                                    expected: list[int], has_more: bool) -> None:
    await _thread_with_messages(store, "alice", 5)
    page = await store.page("alice", "message", "thread_1", query)
    assert _ids(page.items) == [f"msg_{i}" for i in expected]
    assert page.has_more is has_more


async def test_deleting_a_thread_removes_its_messages_runs_steps_and_lock(
        store: ThreadStore) -> None:
    await _thread_with_messages(store, "alice", 2)
    await store.insert("alice", "run", {"id": "run_1"}, parent="thread_1", thread_id="thread_1")
    await store.insert("alice", "step", {"id": "step_1"}, parent="run_1", thread_id="thread_1")
    await store.claim("alice", "thread_1", "run_1", 60)
    assert await store.delete_thread("alice", "thread_1") is True
    for kind, obj_id in [("thread", "thread_1"), ("message", "msg_0"), ("run", "run_1"),
                         ("step", "step_1")]:
        assert await store.get("alice", kind, obj_id) is None  # type: ignore[arg-type]
    assert (await store.page("alice", "step", "run_1", PageQuery())).items == []
    assert await store.holder("alice", "thread_1") is None
    assert await store.delete_thread("alice", "thread_1") is False


async def test_thread_lock_admits_one_run_until_released_or_expired(store: ThreadStore) -> None:
    assert await store.claim("alice", "thread_1", "run_1", 60) is None
    assert await store.claim("alice", "thread_1", "run_2", 60) == "run_1"
    assert await store.claim("bob", "thread_1", "run_9", 60) is None
    assert await store.claim("alice", "thread_1", "run_1", 60) is None  # extends its own
    await store.release("alice", "thread_1", "run_2")  # not the holder: no effect
    assert await store.holder("alice", "thread_1") == "run_1"
    await store.release("alice", "thread_1", "run_1")
    assert await store.claim("alice", "thread_1", "run_2", 0.001) is None
    await asyncio.sleep(0.01)
    assert await store.claim("alice", "thread_1", "run_3", 60) is None
