"""Streams the client leaves mid-way are billed what the upstream produced (openai SDK, e2e).

The attack: read the first chunk of a `stream: true` completion and hang up, again and
again. The upstream bills every one of those answers, so the key must too.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from limits_support import (
    LIMITS_RULES,
    MAX_TOKENS,
    PROMPT,
    exact_cost_nanos,
    redis_prefix,  # noqa: F401
)

from proxy.store.limits import to_usd
from proxy.testing import LiveProxy, admin_get
from proxy.upstream.fake import FakeUpstream, answer

COST = exact_cost_nanos()
BUDGET_CALLS = 6


def limited(tmp_path: Path, policy: dict[str, Any], fake: FakeUpstream, backend: str = "sqlite",
            prefix: str = "", upstream: dict[str, Any] | None = None) -> LiveProxy:
    """A live proxy with admission and budget, alice under `policy`."""
    extra: dict[str, Any] = {"keys": {"alice": policy}, "upstream": upstream or {}}
    if backend == "redis":
        extra["storage"] = {"backend": "redis", "redis_prefix": prefix}
    return LiveProxy(tmp_path, rules=LIMITS_RULES, config=extra, fake=fake)


def abort_after_first_chunk(live: LiveProxy, **params: Any) -> None:
    """Open a stream, read one chunk, hang up."""
    body = {"model": "gpt-4o-mini", "messages": PROMPT, **params}
    stream = live.client().chat.completions.create(stream=True, **body)
    next(iter(stream))
    stream.close()


def upstream_usage(body: dict[str, Any]) -> tuple[int, int]:
    """What the fake upstream bills for the request it received."""
    usage = answer(body)["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"]


def actions(row: dict[str, Any]) -> set[str]:
    """The (stage, action) pairs of a ledger row's trace, as 'stage.action'."""
    return {f"{d['stage']}.{d['action']}" for d in orjson.loads(row["trace"])}


def wait_until_draining(live: LiveProxy) -> int:
    """Wait until the proxy noticed the client left and reads the stream on behind it;
    how many such drains run."""

    async def drains() -> int:
        return len(live.resources.background)

    deadline = time.monotonic() + 30
    while not live.run(drains()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return live.run(drains())


def spent_usd(live: LiveProxy) -> float:
    return float(admin_get(live, "/v1/proxy/keys/alice")[1]["spent_usd"])


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_aborting_streams_is_billed_and_cannot_overspend_the_budget(
        tmp_path: Path, backend: str, redis_prefix: str) -> None:  # noqa: F811
    fake = FakeUpstream(tokens_per_second=50)  # 40 ms between events: each abort is mid-stream
    policy = {"budget_usd": to_usd(BUDGET_CALLS * COST)}
    with limited(tmp_path, policy, fake, backend, redis_prefix) as live:
        aborted = 0
        with pytest.raises(openai.RateLimitError) as err:
            for _ in range(10 * BUDGET_CALLS):
                abort_after_first_chunk(live, max_tokens=MAX_TOKENS)
                aborted += 1
        rows = live.wait_ledger_rows(aborted, status=499)
        with pytest.raises(openai.RateLimitError) as after:  # settled, still no room
            abort_after_first_chunk(live, max_tokens=MAX_TOKENS)
        spent = spent_usd(live)
        prices = live.resources.prices
        billed = [upstream_usage(body) for body in live.fake.received]
    assert err.value.code == after.value.code == "insufficient_quota"
    assert aborted == len(billed) == len(rows) == BUDGET_CALLS
    assert sorted((r["prompt_tokens"], r["completion_tokens"]) for r in rows) == sorted(billed)
    for row in rows:
        assert row["cost_usd"] > 0
        assert row["cost_usd"] == pytest.approx(
            prices.cost("gpt-4o-mini", row["prompt_tokens"], row["completion_tokens"]))
        assert {"upstream.client_left"} <= actions(row)
        assert "upstream.usage_counted" not in actions(row)  # the upstream's own usage chunk
    assert spent == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert spent == to_usd(BUDGET_CALLS * COST)


def test_upstream_without_usage_is_billed_from_the_tokens_it_streamed(tmp_path: Path) -> None:
    fake = FakeUpstream(tokens_per_second=50, stream_usage=False)
    with limited(tmp_path, {"budget_usd": 1.0}, fake) as live:
        abort_after_first_chunk(live)
        [row] = live.wait_ledger_rows(1, status=499)
        spent = spent_usd(live)
        prompt, completion = upstream_usage(live.fake.received[0])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert completion > 0
    assert "upstream.usage_counted" in actions(row)
    assert spent == pytest.approx(row["cost_usd"]) and spent > 0


def test_drain_cut_by_the_upstream_timeout_bills_prompt_and_tokens_streamed(
        tmp_path: Path) -> None:
    fake = FakeUpstream(tokens_per_second=2)  # one event a second: longer than the bound
    with limited(tmp_path, {"budget_usd": 1.0}, fake, upstream={"total_timeout": 1}) as live:
        abort_after_first_chunk(live)
        [row] = live.wait_ledger_rows(1, status=499)
        spent = spent_usd(live)
        prompt, completion = upstream_usage(live.fake.received[0])
    assert {"upstream.drain_cut", "upstream.usage_counted"} <= actions(row)
    assert row["prompt_tokens"] == prompt
    assert row["completion_tokens"] < completion
    assert spent == pytest.approx(row["cost_usd"]) and spent > 0


def test_concurrency_slot_is_held_while_the_upstream_streams_then_freed(tmp_path: Path) -> None:
    fake = FakeUpstream(tokens_per_second=4)  # one event every 0.5 s
    with limited(tmp_path, {"max_concurrent": 1}, fake) as live:
        abort_after_first_chunk(live, max_tokens=MAX_TOKENS)
        assert wait_until_draining(live) == 1
        with pytest.raises(openai.RateLimitError) as err:  # the upstream still works for it
            abort_after_first_chunk(live, max_tokens=MAX_TOKENS)
        live.wait_ledger_rows(1, status=499)
        live.fake.tokens_per_second = 0
        served = live.client().chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, max_tokens=MAX_TOKENS)
    assert err.value.code == "rate_limit_exceeded"
    assert served.choices[0].message.content


def test_shutdown_during_a_drain_still_settles_and_records(tmp_path: Path) -> None:
    fake = FakeUpstream(tokens_per_second=2)  # the stream outlasts the shutdown grace
    with limited(tmp_path, {"budget_usd": 1.0}, fake) as live:
        abort_after_first_chunk(live)
        assert wait_until_draining(live) == 1
    with sqlite3.connect(tmp_path / "proxy.db") as db:
        status, cost, trace = db.execute("SELECT status, cost_usd, trace FROM ledger").fetchone()
    assert status == 499 and cost > 0
    assert "usage_counted" in trace
    with limited(tmp_path, {"budget_usd": 1.0}, FakeUpstream()) as live:
        assert spent_usd(live) == pytest.approx(cost)
