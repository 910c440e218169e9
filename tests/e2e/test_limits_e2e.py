"""Budgets and rate limits end to end through the official openai SDK (one proxy process)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from limits_support import (
    LIMITS_RULES,
    MAX_TOKENS,
    PROMPT,
    WebhookReceiver,
    admin_get,
    burst,
    codes,
    exact_cost_nanos,
    redis_prefix,  # noqa: F401
)

from proxy.store.limits import to_usd
from proxy.testing import LiveProxy
from proxy.upstream.fake import FakeUpstream

COST = exact_cost_nanos()


def limited(tmp_path: Path, policy: dict[str, Any], backend: str = "sqlite", prefix: str = "",
            fake: FakeUpstream | None = None, **config: Any) -> LiveProxy:
    """A live proxy with admission and budget, alice under `policy`."""
    extra: dict[str, Any] = {"keys": {"alice": policy}, **config}
    if backend == "redis":
        extra["storage"] = {"backend": "redis", "redis_prefix": prefix}
    return LiveProxy(tmp_path, rules=LIMITS_RULES, config=extra, fake=fake)


def ask(live: LiveProxy, **kwargs: Any) -> Any:
    body = {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": MAX_TOKENS, **kwargs}
    return live.client().chat.completions.with_raw_response.create(**body)


def spent_usd(live: LiveProxy, name: str = "alice") -> float:
    return float(admin_get(live.base_url, f"/proxy/keys/{name}")["spent_usd"])


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_200_concurrent_requests_on_a_budget_for_10_serve_exactly_10(
        tmp_path: Path, backend: str, redis_prefix: str) -> None:  # noqa: F811
    with limited(tmp_path, {"budget_usd": to_usd(10 * COST)}, backend, redis_prefix) as live:
        results = asyncio.run(burst(live.base_url, live.key(), 200))
        assert codes(results) == {"ok": 10, "insufficient_quota": 190}
        assert len(live.fake.received) == 10
        rows = [r for r in live.ledger_rows() if r["status"] == 200]
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(to_usd(10 * COST))
        assert spent_usd(live) == to_usd(10 * COST)


def test_success_carries_openai_ratelimit_headers(tmp_path: Path) -> None:
    with limited(tmp_path, {"rpm": 10, "tpm": 1000}) as live:
        raw = ask(live)
    used = raw.parse().usage.total_tokens
    assert raw.headers["x-ratelimit-limit-requests"] == "10"
    assert raw.headers["x-ratelimit-remaining-requests"] == "9"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000"
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(1000 - used)
    assert raw.headers["x-ratelimit-reset-tokens"].endswith("s")


def test_rpm_refusal_is_429_rate_limit_exceeded_before_any_work(tmp_path: Path) -> None:
    with limited(tmp_path, {"rpm": 2}) as live:
        ask(live), ask(live)
        with pytest.raises(openai.RateLimitError) as err:
            ask(live)
        assert len(live.fake.received) == 2
    assert err.value.code == "rate_limit_exceeded"
    headers = err.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == (
        "2", "0")


def test_tpm_counts_tokens_and_refuses_what_does_not_fit(tmp_path: Path) -> None:
    with limited(tmp_path, {"tpm": 40}) as live:
        first = ask(live)
        second = ask(live)
        with pytest.raises(openai.RateLimitError) as err:
            ask(live)
    per_request = first.parse().usage.total_tokens
    assert second.headers["x-ratelimit-remaining-tokens"] == str(40 - 2 * per_request)
    assert err.value.code == "rate_limit_exceeded" and "tokens per min" in err.value.message


def test_tpm_reservation_is_settled_to_actual_usage(tmp_path: Path) -> None:
    # without max_tokens 1024 completion tokens are held; only the ~15 really used stay counted
    with limited(tmp_path, {"tpm": 1100}) as live:
        first = ask(live, max_tokens=None)
        second = ask(live, max_tokens=None)
    used = first.parse().usage.total_tokens + second.parse().usage.total_tokens
    assert second.parse().choices[0].message.content
    assert live.fake.received[-1].get("max_tokens") is None
    assert used < 100


def test_concurrency_cap_holds(tmp_path: Path) -> None:
    with limited(tmp_path, {"max_concurrent": 3}, fake=FakeUpstream(ttft=0.5)) as live:
        results = asyncio.run(burst(live.base_url, live.key(), 8))
        after = ask(live)
    assert codes(results) == {"ok": 3, "rate_limit_exceeded": 5}
    assert after.parse().choices[0].message.content


def test_streamed_request_is_settled_when_the_stream_ends(tmp_path: Path) -> None:
    with limited(tmp_path, {"budget_usd": to_usd(2 * COST)}) as live:
        stream = live.client().chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, max_tokens=MAX_TOKENS, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text and spent_usd(live) == to_usd(COST)


def test_client_leaving_mid_stream_is_billed_what_the_upstream_used(tmp_path: Path) -> None:
    fake = FakeUpstream(tokens_per_second=4.0)  # one SSE event every 0.5 s
    with limited(tmp_path, {"budget_usd": to_usd(2 * COST)}, fake=fake) as live:
        stream = live.client().chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, max_tokens=MAX_TOKENS, stream=True)
        next(iter(stream))
        stream.close()
        rows = live.wait_ledger_rows(1)
        assert rows[0]["status"] == 499
        assert spent_usd(live) == to_usd(COST)  # not released: the upstream made the answer
        live.fake.tokens_per_second = 0
        assert ask(live).parse().choices[0].message.content
        with pytest.raises(openai.RateLimitError) as err:
            ask(live)
    assert err.value.code == "insufficient_quota"


def test_failed_upstream_call_releases_the_reservation(tmp_path: Path) -> None:
    with limited(tmp_path, {"budget_usd": to_usd(COST)}) as live:
        live.fake.fail("500", count=3)
        with pytest.raises(openai.InternalServerError):
            ask(live)
        assert ask(live).parse().choices[0].message.content
        assert spent_usd(live) == to_usd(COST)


def test_budget_refusal_tells_the_sdk_not_to_retry(tmp_path: Path) -> None:
    with limited(tmp_path, {"budget_usd": to_usd(COST - 1)}) as live:
        client = live.client().with_options(max_retries=3)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                           max_tokens=MAX_TOKENS)
        assert len(live.fake.received) == 0
    assert err.value.code == "insufficient_quota"
    assert err.value.body["type"] == "insufficient_quota"
    assert err.value.response.headers["x-should-retry"] == "false"
    assert f"of its ${to_usd(COST - 1):.6f} month budget" in err.value.message  # not $0.00


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_spend_survives_a_restart(tmp_path: Path, backend: str,
                                  redis_prefix: str) -> None:  # noqa: F811
    policy = {"budget_usd": to_usd(2 * COST)}
    with limited(tmp_path, policy, backend, redis_prefix) as live:
        ask(live)
    with limited(tmp_path, policy, backend, redis_prefix) as live:
        assert spent_usd(live) == to_usd(COST)
        ask(live)
        with pytest.raises(openai.RateLimitError) as err:
            ask(live)
    assert err.value.code == "insufficient_quota"


def test_soft_budget_and_daily_spend_alerts_are_posted_once(tmp_path: Path) -> None:
    receiver = WebhookReceiver(fail_first=1)  # the first delivery fails and is retried
    try:
        with limited(tmp_path, {"soft_budget_usd": to_usd(2 * COST)},
                     alerts={"webhook_url": receiver.url,
                             "daily_spend_usd": [to_usd(3 * COST)]}) as live:
            for _ in range(5):
                ask(live)
            posts = receiver.wait_for(2)
            time.sleep(0.3)  # room for a duplicate to show up
            posts = list(receiver.posts)
    finally:
        receiver.close()
    texts = [p["text"] for p in posts]
    assert len(texts) == 2
    assert sum("daily threshold" in t for t in texts) == 1
    assert sum("soft budget" in t and "'alice'" in t for t in texts) == 1
