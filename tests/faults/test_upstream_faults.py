"""Upstream faults: each gets a defined outcome (a retry that succeeds, a fallback, or a
clear OpenAI error) and leaves one ledger row, spend equal to what was billed, and no
reservation, concurrency slot or cache entry behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from limits_support import free_port

from proxy.testing import FakeServer
from proxy.upstream.fake import answer

from .support import (
    MODEL,
    assert_released_and_uncached,
    assert_settled,
    guarded,
    outcome,
)

# (fault, streamed?, what the client sees, the ledger row's status); the fault lasts
# through the proxy's retry
FAILURES = [
    ("reset", False, (502, "upstream_unavailable"), 502),
    ("reset", True, (502, "upstream_unavailable"), 502),
    ("hang", False, (504, "upstream_timeout"), 504),
    ("hang", True, (504, "upstream_timeout"), 504),
    ("500", False, (500, None), 500),  # the upstream's own last answer, passed on
    ("bad_json", False, (502, "upstream_bad_response"), 502),
]


@pytest.mark.parametrize(("kind", "stream", "seen", "status"), FAILURES)
def test_a_lasting_upstream_fault_is_a_clear_error_and_releases_everything(
        tmp_path: Path, kind: str, stream: bool, seen: tuple[Any, ...], status: int) -> None:
    with guarded(tmp_path) as live:
        live.fake.fail(kind, count=-1)
        assert outcome(live, stream) == seen
        calls = len(live.fake.received)
        [row] = assert_settled(live, 1)
        live.fake.faults.clear()
        assert_released_and_uncached(live, 1)
    assert calls == (1 if kind == "bad_json" else 2)  # an answer that came is not re-asked
    assert (row["status"], row["cost_usd"]) == (status, 0.0)
    assert row["error"]


# faults that strike once: the proxy's retry gets the answer
RECOVERED = [("reset", False), ("reset", True), ("500", False), ("500", True),
             ("429", False), ("429", True), ("hang", False), ("hang", True),
             ("cut", False), ("stall", False)]


@pytest.mark.parametrize(("kind", "stream"), RECOVERED)
def test_a_passing_upstream_fault_is_retried_and_billed_once(
        tmp_path: Path, kind: str, stream: bool) -> None:
    with guarded(tmp_path) as live:
        live.fake.fail(kind, retry_after=0.01)
        kind_seen = outcome(live, stream)
        calls = len(live.fake.received)
        [row] = assert_settled(live, 1)
    assert kind_seen[0] == "ok" and "Here is my answer" in kind_seen[1]
    assert calls == 2
    assert row["status"] == 200 and row["cost_usd"] > 0
    prompt, completion = (answer(live.fake.received[-1])["usage"][k]
                          for k in ("prompt_tokens", "completion_tokens"))
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)


@pytest.mark.parametrize(("kind", "why"), [("cut", "broke off"), ("stall", "broke off"),
                                          ("bad_sse", "malformed")])
def test_a_stream_broken_mid_way_ends_in_an_error_event_billed_for_what_streamed(
        tmp_path: Path, kind: str, why: str) -> None:
    with guarded(tmp_path) as live:
        live.fake.fail(kind)
        seen = outcome(live, stream=True)
        [row] = assert_settled(live, 1)
        full = answer(live.fake.received[0])["usage"]
        assert_released_and_uncached(live, 1)
    assert seen[0] == "stream_error" and why in seen[1]
    assert row["status"] == 502 and why in row["error"]
    assert row["prompt_tokens"] == full["prompt_tokens"]
    assert 0 < row["completion_tokens"] < full["completion_tokens"]  # what came, no more


def test_429_with_a_long_retry_after_is_passed_on_at_once(tmp_path: Path) -> None:
    with guarded(tmp_path) as live:
        live.fake.fail("429", count=-1, retry_after=30)  # longer than the proxy waits
        seen = outcome(live)
        calls = len(live.fake.received)
        [row] = assert_settled(live, 1)
    assert seen == (429, None)
    assert calls == 1
    assert row["status"] == 429


def test_short_retry_after_is_honoured_then_passed_on_when_retries_run_out(
        tmp_path: Path) -> None:
    with guarded(tmp_path, upstream={"max_retries": 2}) as live:
        live.fake.fail("429", count=-1, retry_after=0.01)
        seen = outcome(live)
        calls = len(live.fake.received)
        [row] = assert_settled(live, 1)
        live.fake.faults.clear()
        assert_released_and_uncached(live, 1)
    assert seen == (429, None) and calls == 3
    assert row["status"] == 429


def test_a_failing_model_falls_back_and_the_fallback_is_billed(tmp_path: Path) -> None:
    with guarded(tmp_path, keys={"alice": {"max_concurrent": 1, "budget_usd": 1.0}},
                 fallbacks={MODEL: ["fake:gpt-4o"]}) as live:
        live.fake.fail("reset", count=-1, model=MODEL)
        seen = outcome(live)
        [row] = assert_settled(live, 1)
    assert seen[0] == "ok" and seen[1].startswith("[gpt-4o]")
    assert (row["status"], row["model"]) == (200, "gpt-4o")
    assert [b["model"] for b in live.fake.received] == [MODEL, MODEL, "gpt-4o"]


@pytest.mark.parametrize("fallback", [False, True])
def test_a_refused_connection_is_a_502_or_the_fallback(tmp_path: Path, fallback: bool) -> None:
    dead = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "models": [MODEL], "max_retries": 1, "backoff_seconds": 0.01}
    with FakeServer() as other:
        alive = {"name": "alive", "base_url": other.url, "models": ["*"]}
        routes = {"fallbacks": {MODEL: ["alive:gpt-4o"]}} if fallback else {}
        with guarded(tmp_path, upstreams=[dead, alive],
                     keys={"alice": {"max_concurrent": 1, "budget_usd": 1.0}},
                     **routes) as live:
            seen = outcome(live)
            [row] = assert_settled(live, 1)
            second = outcome(live)  # the slot was freed
    if fallback:
        assert seen[0] == "ok" and row["model"] == "gpt-4o" and row["status"] == 200
    else:
        assert seen == (502, "upstream_unavailable")
        assert row["status"] == 502 and "unreachable" in row["error"]
        assert second == seen
