"""Redis killed mid-run: the configured policy applies, then the proxy recovers by itself."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from limits_support import (
    LIMITS_RULES,
    MAX_TOKENS,
    PROMPT,
    OwnRedis,
    admin_get,
    exact_cost_nanos,
    own_redis,  # noqa: F401
)

from proxy.store.limits import to_usd
from proxy.testing import LiveProxy

COST = exact_cost_nanos()


def proxy_on(tmp_path: Path, server: OwnRedis, policy: str) -> LiveProxy:
    return LiveProxy(tmp_path, rules=LIMITS_RULES, config={
        "storage": {"backend": "redis", "redis_url": server.url, "redis_failure": policy,
                    "redis_timeout": 0.2, "redis_prefix": "outage:"},
        "keys": {"alice": {"rpm": 3, "budget_usd": 1.0}}})


def ask(live: LiveProxy) -> Any:
    return live.client().chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                 max_tokens=MAX_TOKENS)


def until_served(live: LiveProxy, timeout: float = 15) -> Any:
    """Ask until a request is served (the proxy is retrying Redis with a backoff)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ask(live)
        except (openai.RateLimitError, openai.InternalServerError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def requests_in_redis(server: OwnRedis) -> int:
    return int(redis.Redis(port=server.port).zcard("outage:lim:{alice}:rq"))


def test_fail_open_serves_with_local_limits_then_shares_again(
        tmp_path: Path, own_redis: OwnRedis,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "proxy.limits")
    with proxy_on(tmp_path, own_redis, "open") as live:
        ask(live)
        own_redis.stop()
        outcomes = []
        for _ in range(4):
            try:
                outcomes.append(bool(ask(live).choices))
            except openai.RateLimitError as exc:
                outcomes.append(exc.code)
        assert outcomes == [True, True, True, "rate_limit_exceeded"]  # rpm 3, held locally
        own_redis.start()
        until_served(live)
        assert requests_in_redis(own_redis) == 1
        # the 3 requests served during the outage were added to the shared spend
        assert admin_get(live.base_url, "/proxy/keys/alice")["spent_usd"] == to_usd(4 * COST)
    messages = [r.getMessage() for r in caplog.records if r.name == "proxy.limits"]
    assert sum("is unreachable" in m for m in messages) == 1
    assert sum("shared again" in m for m in messages) == 1


def test_fail_closed_answers_503_then_serves_when_redis_is_back(
        tmp_path: Path, own_redis: OwnRedis) -> None:  # noqa: F811
    with proxy_on(tmp_path, own_redis, "closed") as live:
        ask(live)
        own_redis.stop()
        with pytest.raises(openai.InternalServerError) as err:
            ask(live)
        assert (err.value.status_code, err.value.code) == (503, "service_unavailable")
        assert len(live.fake.received) == 1
        own_redis.start()
        assert until_served(live).choices[0].message.content
        assert requests_in_redis(own_redis) == 1
