"""Three `python -m proxy serve` processes sharing Redis hold one budget and one rpm window."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest
from limits_support import (
    LIMITS_RULES,
    FakeServer,
    ProxyProcess,
    admin_get,
    admin_send,
    burst,
    codes,
    exact_cost_nanos,
    start_proxies,
    write_config,
)

from proxy.store.limits import to_usd
from proxy.testing import drop_redis_prefix, redis_test_prefix
from proxy.upstream.fake import FakeUpstream

COST = exact_cost_nanos()
KEYS = {"spender": {"secret": "sk-test-spender", "budget_usd": to_usd(10 * COST)},
        "caller": {"secret": "sk-test-caller", "rpm": 60}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    server = FakeServer(FakeUpstream())
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory, fake: FakeServer
            ) -> Iterator[list[ProxyProcess]]:
    tmp = tmp_path_factory.mktemp("procs")
    prefix = redis_test_prefix()
    config = write_config(tmp / "config.toml", fake.url, KEYS,
                          f'backend = "redis"\nredis_prefix = "{prefix}"\n'
                          f'sqlite_path = "{tmp / "proxy.db"}"')
    rules = tmp / "rules.toml"
    rules.write_text(LIMITS_RULES)
    procs = start_proxies(3, config, rules, tmp)
    yield procs
    for proc in procs:
        proc.stop()
    drop_redis_prefix(prefix)


async def across(procs: list[ProxyProcess], secret: str, n: int) -> list[object]:
    """`n` concurrent requests spread evenly over the processes."""
    shares = [n // len(procs) + (i < n % len(procs)) for i in range(len(procs))]
    parts = await asyncio.gather(*(burst(p.base_url, secret, k) for p, k in zip(procs, shares)))
    return [r for part in parts for r in part]


def test_budget_for_10_serves_exactly_10_of_200_across_3_processes(
        proxies: list[ProxyProcess], fake: FakeServer) -> None:
    results = asyncio.run(across(proxies, "sk-test-spender", 200))
    assert codes(results) == {"ok": 10, "insufficient_quota": 190}
    assert sum(1 for body in fake.fake.received if body.get("max_tokens")) == 10
    spent = admin_get(proxies[1].base_url, "/proxy/keys/spender")["spent_usd"]
    assert spent == to_usd(10 * COST)


def test_rpm_60_admits_60_per_minute_across_3_processes(proxies: list[ProxyProcess]) -> None:
    results = asyncio.run(across(proxies, "sk-test-caller", 90))
    counted = codes(results)
    assert abs(counted["ok"] - 60) <= 1
    assert counted["rate_limit_exceeded"] == 90 - counted["ok"]


def test_key_issued_on_one_process_works_on_the_others(proxies: list[ProxyProcess]) -> None:
    status, created = admin_send(proxies[0].base_url, "POST", "/proxy/keys",
                                 {"name": "fresh", "rpm": 100})
    assert status == 201
    for proc in proxies[1:]:
        client = openai.OpenAI(base_url=proc.base_url, api_key=created["key"], max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o-mini",
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
