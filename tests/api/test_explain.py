"""POST /v1/proxy/explain: the trace without an upstream call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
from limits_support import LIMITS_RULES, MAX_TOKENS, PROMPT, admin_get

from proxy import tokens
from proxy.testing import LiveProxy


def explain(live: LiveProxy, body: dict[str, Any]) -> Any:
    return live.client().post("/proxy/explain", cast_to=object, body=body)


def test_explain_reports_trace_and_never_calls_upstream(live: LiveProxy) -> None:
    report = explain(live, {"model": "gpt-4o",
                            "messages": [{"role": "user", "content": "plan my week"}]})
    assert report["answered_by"] == "upstream"
    assert report["model"] == "gpt-4o"
    assert report["prompt_tokens"]["as_sent"] > 0
    assert report["trace"][-1]["action"] == "would_forward"
    assert len(live.fake.received) == 0
    assert live.ledger_rows() == []


def test_explain_counts_towards_the_keys_rpm(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=LIMITS_RULES, config={"keys": {"alice": {"rpm": 2}}}) as live:
        body = {"model": "gpt-4o-mini", "messages": PROMPT}
        explain(live, body), explain(live, body)
        with pytest.raises(openai.RateLimitError) as err:
            explain(live, body)
        assert len(live.fake.received) == 0
    assert err.value.code == "rate_limit_exceeded"


def test_explain_reserves_no_tokens_and_no_budget(tmp_path: Path) -> None:
    policy = {"tpm": 100_000, "budget_usd": 1.0}
    with LiveProxy(tmp_path, rules=LIMITS_RULES, config={"keys": {"alice": policy}}) as live:
        body = {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": MAX_TOKENS}
        trace = explain(live, body)["trace"]
        explain(live, body)
        assert admin_get(live.base_url, "/proxy/keys/alice")["spent_usd"] == 0
        raw = live.client().chat.completions.with_raw_response.create(**body)
    assert [d["action"] for d in trace if d["stage"] == "budget"] == ["would_reserve"]
    used = raw.parse().usage.total_tokens
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(100_000 - used)


def test_explain_counts_a_large_body_off_the_event_loop(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    counted_on_loop: list[bool] = []

    def spy(count: Any) -> Any:
        def counting(body: dict[str, Any]) -> int:
            if tokens.is_large(body["messages"]):
                counted_on_loop.append(_on_event_loop())
            return int(count(body))
        return counting

    monkeypatch.setattr(tokens, "count_request", spy(tokens.count_request))
    monkeypatch.setattr(tokens, "prompt_tokens", spy(tokens.prompt_tokens))
    big = "a long diary entry about training " * 2_000
    with LiveProxy(tmp_path, rules=LIMITS_RULES, config={"keys": {"alice": {"rpm": 10}}}) as live:
        report = explain(live, {"model": "gpt-4o-mini",
                                "messages": [{"role": "user", "content": big}]})
    assert report["prompt_tokens"]["as_sent"] > 10_000
    assert counted_on_loop and not any(counted_on_loop)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
