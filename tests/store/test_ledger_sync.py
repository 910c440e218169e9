"""One ledger across replicas: rows travel through a Redis stream, once, surviving outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import redis.asyncio
from limits_support import OwnRedis, own_redis, redis_prefix  # noqa: F401  (fixtures)

from proxy.store.ledger import Ledger
from proxy.store.ledger_sync import LedgerSync
from proxy.store.sqlite import open_db
from proxy.testing import REDIS_URL, LiveProxy, admin_get, sample_entry


class Host:
    """One replica's sqlite ledger and its sync, on a Redis prefix."""

    def __init__(self, path: Path, url: str, prefix: str, batch: int = 500) -> None:
        self.path, self.url, self.prefix, self.batch = path, url, prefix, batch
        self.db: aiosqlite.Connection | None = None
        self.ledger: Ledger | None = None
        self.sync: LedgerSync | None = None

    async def open(self) -> Host:
        self.db = await open_db(str(self.path))
        self.ledger = Ledger(self.db)
        await self.ledger.start()
        self.sync = LedgerSync(str(self.path), redis.asyncio.from_url(self.url), self.prefix,
                               interval=3600, batch=self.batch)  # the test drives sync()
        await self.sync.start()
        return self

    async def record(self, *request_ids: str) -> None:
        assert self.ledger is not None
        for rid in request_ids:
            self.ledger.record(sample_entry(request_id=rid, ts=time.time(), tenant="alice"))
        await self.ledger.flush()

    async def ids(self) -> list[str]:
        assert self.ledger is not None
        return sorted(row["request_id"] for row in await self.ledger.rows())

    async def close(self) -> None:
        assert self.sync and self.ledger and self.db
        await self.sync.aclose()
        await self.ledger.close()
        await self.db.close()


@pytest.fixture
async def hosts(tmp_path: Path, redis_prefix: str) -> AsyncIterator[list[Host]]:  # noqa: F811
    opened = [await Host(tmp_path / f"host{i}.db", REDIS_URL, redis_prefix).open()
              for i in range(2)]
    yield opened
    for host in opened:
        await host.close()


async def test_each_host_sees_every_hosts_rows_once(hosts: list[Host]) -> None:
    a, b = hosts
    await a.record("a1", "a2")
    await b.record("b1")
    for _ in range(2):  # syncing again changes nothing
        for host in (a, b, a):
            assert host.sync is not None
            await host.sync.sync()
    assert await a.ids() == await b.ids() == ["a1", "a2", "b1"]
    assert a.sync and b.sync and a.sync.origin != b.sync.origin


async def test_rows_shipped_twice_are_copied_once(hosts: list[Host]) -> None:
    a, b = hosts
    await a.record("a1", "a2", "a3")
    assert a.sync and b.sync and a.db
    await a.sync.sync()
    await a.db.execute("UPDATE ledger_sync SET value = '0' WHERE name = 'shipped_rowid'")
    await a.sync.sync()  # as if a worker died after shipping, before recording it
    await b.sync.sync()
    assert await b.sync.client.xlen(b.sync.stream) == 6
    assert await b.ids() == ["a1", "a2", "a3"]


async def test_two_workers_of_one_host_neither_duplicate_nor_reimport(
        tmp_path: Path, redis_prefix: str) -> None:  # noqa: F811
    shared = tmp_path / "host.db"
    w1 = await Host(shared, REDIS_URL, redis_prefix, batch=2).open()
    w2 = await Host(shared, REDIS_URL, redis_prefix, batch=2).open()
    other = await Host(tmp_path / "other.db", REDIS_URL, redis_prefix, batch=2).open()
    try:
        assert w1.sync and w2.sync and other.sync
        assert w1.sync.origin == w2.sync.origin  # one sqlite file: one origin
        await w1.record("w1a", "w1b", "w1c")
        await w2.record("w2a")
        await other.record("o1", "o2", "o3")
        for sync in (w1.sync, w2.sync, other.sync, w2.sync, w1.sync):
            await sync.sync()
        assert await w1.ids() == ["o1", "o2", "o3", "w1a", "w1b", "w1c", "w2a"]
        assert await other.ids() == await w1.ids()
    finally:
        for host in (w1, w2, other):
            await host.close()


async def test_workers_of_one_host_take_turns_shipping(tmp_path: Path,
                                                       redis_prefix: str) -> None:  # noqa: F811
    shared = tmp_path / "host.db"
    workers = [await Host(shared, REDIS_URL, redis_prefix).open() for _ in range(3)]
    try:
        await workers[0].record(*(f"r{i}" for i in range(50)))
        sync = workers[0].sync
        assert sync is not None
        for _ in range(100):  # a worker that finds the lock taken ships nothing this round
            await asyncio.gather(*(w.sync.ship() for w in workers if w.sync))
            if await sync._get("shipped_rowid", "0") == "50":
                break
            await asyncio.sleep(0.02)
        assert await sync.client.xlen(sync.stream) == 50  # each row once on the stream
    finally:
        for worker in workers:
            await worker.close()


async def test_an_unreadable_stream_entry_is_skipped(hosts: list[Host]) -> None:
    a, b = hosts
    assert a.sync and b.sync
    await b.sync.client.xadd(b.sync.stream, {"o": "elsewhere", "r": 1, "row": b"{not json"})
    await b.sync.client.xadd(b.sync.stream, {"something": "else"})
    await a.record("after")
    await a.sync.sync()
    await b.sync.sync()
    assert await b.ids() == ["after"]


async def test_rows_wait_while_redis_is_down_and_go_when_it_is_back(
        tmp_path: Path, own_redis: OwnRedis) -> None:  # noqa: F811
    a = await Host(tmp_path / "a.db", own_redis.url, "t:").open()
    b = await Host(tmp_path / "b.db", own_redis.url, "t:").open()
    try:
        assert a.sync and b.sync
        own_redis.stop()
        await a.record("during-outage")
        with pytest.raises(redis.ConnectionError):
            await a.sync.sync()
        own_redis.start()
        await a.sync.sync()
        await b.sync.sync()
        assert await b.ids() == ["during-outage"]
    finally:
        await a.close()
        await b.close()


@pytest.fixture
def replicas(tmp_path: Path, redis_prefix: str) -> Iterator[list[LiveProxy]]:  # noqa: F811
    storage = {"storage": {"backend": "redis", "redis_url": REDIS_URL,
                           "redis_prefix": redis_prefix}}
    with LiveProxy(tmp_path / "r1", config=storage) as one, \
            LiveProxy(tmp_path / "r2", config=storage) as two:
        yield [one, two]


def _calls(live: LiveProxy, key: str) -> Any:
    return admin_get(live, "/v1/proxy/stats?from=2000-01-01", key=key)[1]["totals"]["calls"]


def test_stats_on_any_replica_count_requests_served_by_the_others(
        replicas: list[LiveProxy]) -> None:
    one, two = replicas
    for live, text in ((one, "hello from one"), (two, "hello from two"), (two, "again")):
        live.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (_calls(one, "admin"), _calls(two, "admin")) != (3, 3):
        time.sleep(0.1)
    assert (_calls(one, "admin"), _calls(two, "admin")) == (3, 3)
    assert _calls(one, "alice") == 3 and _calls(one, "bob") == 0  # still one tenant's rows
