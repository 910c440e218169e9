"""The key stores (sqlite, Redis): a key's name is issued once, ever."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from limits_support import redis_prefix  # noqa: F401  (fixture)

from proxy.config import KeyConfig, hash_key
from proxy.store.keys import KeyStore, RedisKeyStore, SqliteKeyStore
from proxy.store.redis_client import fail_fast_client
from proxy.store.sqlite import open_db

Factory = Callable[[], Awaitable[KeyStore]]


def key(name: str, secret: str = "sk-one") -> KeyConfig:
    return KeyConfig(name=name, sha256=hash_key(secret), namespace=name)


@pytest.fixture(params=["sqlite", "redis"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path,
                     redis_prefix: str) -> AsyncIterator[Factory]:  # noqa: F811
    """Opens stores of one backend over the same persistent state (a restart opens another)."""
    closers: list[Callable[[], Awaitable[object]]] = []

    async def open_one() -> KeyStore:
        if request.param == "redis":
            client = fail_fast_client("redis://127.0.0.1:6379/0", 1.0)
            closers.append(client.aclose)
            return RedisKeyStore(client, redis_prefix)
        db = await open_db(str(tmp_path / "proxy.db"))
        closers.append(db.close)
        store = SqliteKeyStore(db)
        await store.start()
        return store

    yield open_one
    for close in closers:
        await close()


async def test_create_issues_a_new_name(open_store: Factory) -> None:
    store = await open_store()
    assert await store.create(key("team-a"))
    assert await store.by_name("team-a") == key("team-a")


async def test_create_refuses_a_live_name_and_keeps_its_key(open_store: Factory) -> None:
    store = await open_store()
    await store.create(key("team-a"))
    assert not await store.create(key("team-a", "sk-two"))
    assert await store.by_name("team-a") == key("team-a")


async def test_a_revoked_name_stays_taken_across_restarts(open_store: Factory) -> None:
    store = await open_store()
    await store.create(key("team-a"))
    await store.delete("team-a")
    restarted = await open_store()
    assert not await restarted.create(key("team-a", "sk-two"))
    assert await restarted.by_hash(hash_key("sk-two")) is None


async def test_reserved_names_are_never_issued(open_store: Factory) -> None:
    store = await open_store()
    await store.reserve(["alice", "bob"])
    assert [await store.create(key(n)) for n in ("alice", "bob", "carol")] == [False, False, True]


async def test_a_key_stored_before_names_were_recorded_keeps_its_name_when_revoked(
        open_store: Factory) -> None:
    store = await open_store()
    await store.put(key("legacy"))  # as stores written by earlier versions hold it
    restarted = await open_store()
    await restarted.delete("legacy")
    assert not await restarted.create(dataclasses.replace(key("legacy"), sha256=hash_key("x")))
