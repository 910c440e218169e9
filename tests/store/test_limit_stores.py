"""The limit stores (in-process + sqlite, Redis) behave the same, exactly, under concurrency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from limits_support import redis_prefix  # noqa: F401  (fixture)

from proxy.periods import current_period
from proxy.store.limits import Ask, Limits, LimitStore
from proxy.store.limits_local import LocalLimits
from proxy.store.limits_redis import RedisLimits
from proxy.store.redis_mux import RedisMux
from proxy.store.spend import SqliteSpend
from proxy.store.sqlite import open_db

MONTH = current_period("month", "UTC", time.time())
DAY = current_period("day", "UTC", time.time())
BACKENDS = ["local", "redis"]
Factory = Callable[[], Awaitable[LimitStore]]


@pytest.fixture
async def make_store(request: pytest.FixtureRequest, tmp_path: Path,
                     redis_prefix: str) -> AsyncIterator[Factory]:  # noqa: F811
    """Opens stores of the test's backend over the same persistent state."""
    opened: list[LimitStore] = []
    dbs = []

    async def make() -> LimitStore:
        store: LimitStore
        if request.param == "redis":
            store = RedisLimits(RedisMux("redis://127.0.0.1:6379/0", 1.0), redis_prefix)
        else:
            db = await open_db(str(tmp_path / "proxy.db"))
            dbs.append(db)
            store = LocalLimits(SqliteSpend(db))
            await store.start()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()
    for db in dbs:
        await db.close()


def ask(tokens: int = 10, cost: int = 100, budget: int | None = None,
        tpm: int | None = None) -> Ask:
    return Ask(tokens=tokens, cost=cost, tpm=tpm, budget=budget, period=MONTH,
               lease_seconds=60)


@pytest.mark.parametrize("make_store", BACKENDS, indirect=True)
async def test_rpm_admits_exactly_the_limit_then_says_when_to_retry(make_store: Factory) -> None:
    store = await make_store()
    verdicts = [await store.admit("k", f"t{i}", Limits(rpm=5), 60) for i in range(7)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2
    assert [v.requests.remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    assert verdicts[5].reason == "rpm" and 0 < verdicts[5].retry_after <= 60


@pytest.mark.parametrize("make_store", BACKENDS, indirect=True)
async def test_concurrency_slot_is_freed_by_finish(make_store: Factory) -> None:
    store = await make_store()
    limits = Limits(max_concurrent=2)
    assert (await store.admit("k", "a", limits, 60)).allowed
    assert (await store.admit("k", "b", limits, 60)).allowed
    refused = await store.admit("k", "c", limits, 60)
    assert (refused.allowed, refused.reason) == (False, "concurrency")
    await store.finish("k", "a")
    assert (await store.admit("k", "d", limits, 60)).allowed


@pytest.mark.parametrize("make_store", BACKENDS, indirect=True)
async def test_tpm_counts_reserved_tokens_and_settles_to_actual(make_store: Factory) -> None:
    store = await make_store()
    first = await store.reserve("k", "a", ask(tokens=600, tpm=1000))
    assert first.allowed and first.tokens.remaining == 400
    refused = await store.reserve("k", "b", ask(tokens=600, tpm=1000))
    assert (refused.allowed, refused.reason) == (False, "tpm")
    await store.settle("k", "a", 100, 0, MONTH, DAY)
    again = await store.reserve("k", "c", ask(tokens=600, tpm=1000))
    assert again.allowed and again.tokens.used == 700


@pytest.mark.parametrize("make_store", BACKENDS, indirect=True)
async def test_budget_admits_exactly_what_fits_under_200_concurrent_reservations(
        make_store: Factory) -> None:
    store = await make_store()
    verdicts = await asyncio.gather(*(store.reserve("k", f"t{i}", ask(cost=1234, budget=12340))
                                      for i in range(200)))
    allowed = [v for v in verdicts if v.allowed]
    assert len(allowed) == 10
    assert {v.reason for v in verdicts if not v.allowed} == {"budget"}


@pytest.mark.parametrize("make_store", BACKENDS, indirect=True)
async def test_settle_bills_actual_cost_and_release_frees_the_hold(make_store: Factory) -> None:
    store = await make_store()
    assert (await store.reserve("k", "a", ask(cost=600, budget=1000))).allowed
    assert not (await store.reserve("k", "b", ask(cost=600, budget=1000))).allowed
    settled = await store.settle("k", "a", 10, 250, MONTH, DAY)
    assert settled.spent == 250 and settled.day_total >= 250
    assert (await store.reserve("k", "c", ask(cost=600, budget=1000))).allowed
    await store.settle("k", "c", 0, 0, MONTH, DAY)
    assert await store.spent("k", MONTH.name) == 250
    assert (await store.reserve("k", "d", ask(cost=750, budget=1000))).allowed


@pytest.mark.parametrize("make_store", BACKENDS, indirect=True)
async def test_spend_survives_reopening_the_store(make_store: Factory) -> None:
    first = await make_store()
    await first.reserve("k", "a", ask(cost=500, budget=1000))
    await first.settle("k", "a", 10, 400, MONTH, DAY)
    await first.aclose()
    second = await make_store()
    assert await second.spent("k", MONTH.name) == 400
    assert not (await second.reserve("k", "b", ask(cost=601, budget=1000))).allowed


@pytest.mark.parametrize("make_store", BACKENDS, indirect=True)
async def test_claim_is_true_once_per_marker(make_store: Factory) -> None:
    store = await make_store()
    assert [await store.claim("alert:x", 60) for _ in range(3)] == [True, False, False]
    assert await store.claim("alert:y", 60)
