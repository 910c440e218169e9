"""What every fault case checks afterwards: one ledger row per request, spend equal to what
the rows billed, and no reservation, concurrency slot or cache entry left behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.testing import LiveProxy, admin_get
from proxy.upstream.fake import FakeUpstream

# exact cache in front of the budget, the rate windows in front of both
RULES = 'pipeline = ["admission", "exact_cache", "budget"]\n[exact_cache]\nshare = "all"\n'
MODEL = "gpt-4o-mini"
PROMPT = [{"role": "user", "content": "Tell me something about budgets"}]
MAX_TOKENS = 40  # more than the fake's answer: stream faults strike mid-answer


def reservation_usd() -> float:
    """What the budget stage reserves for one PROMPT request (default prices)."""
    from proxy import tokens
    from proxy.pricing import PriceTable

    prompt = tokens.count_request({"model": MODEL, "messages": PROMPT})
    return PriceTable().cost(MODEL, prompt, MAX_TOKENS)


def guarded(tmp_path: Path, fake: FakeUpstream | None = None,
            upstream: dict[str, Any] | None = None, **extra: Any) -> LiveProxy:
    """A live proxy where alice may run one request at a time within a budget of two
    reservations: a request that left its slot or its reservation behind gets the next
    one refused (429), which `assert_released_and_uncached` would see."""
    config: dict[str, Any] = {
        "keys": {"alice": {"max_concurrent": 1, "budget_usd": 2 * reservation_usd()}},
        "upstream": {"first_byte_timeout": 1.0, "max_retries": 1, **(upstream or {})},
        **extra}
    return LiveProxy(tmp_path, rules=RULES, config=config, fake=fake)


def ask(live: LiveProxy, stream: bool = False, **params: Any) -> str:
    """One PROMPT request for alice; the answer's text (a stream read to its end)."""
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": MAX_TOKENS, **params}
    client = live.client(timeout=30)
    if not stream:
        return str(client.chat.completions.create(**body).choices[0].message.content)
    chunks = client.chat.completions.create(stream=True, **body)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def outcome(live: LiveProxy, stream: bool = False, **params: Any) -> tuple[Any, ...]:
    """What the client saw: ("ok", text), (status, code) of an error answer, or
    ("stream_error", message) of an error event inside a 200 stream."""
    try:
        return ("ok", ask(live, stream, **params))
    except openai.APIStatusError as exc:
        return (exc.status_code, exc.code)
    except openai.APIError as exc:
        return ("stream_error", exc.message)


def spent_usd(live: LiveProxy) -> float:
    """alice's settled spend this period, as the keys API reports it."""
    status, key = admin_get(live, "/v1/proxy/keys/alice")
    assert status == 200
    return float(key["spent_usd"])


def assert_settled(live: LiveProxy, requests: int) -> list[dict[str, Any]]:
    """One ledger row per request, each billed at its tokens' price, and alice's spend is
    their sum (nothing more is held). Returns the rows, oldest first."""
    rows = live.wait_ledger_rows(requests)
    assert len(rows) == requests
    prices = live.resources.prices
    for row in rows:
        assert row["cost_usd"] == pytest.approx(prices.cost(
            row["model"], row["prompt_tokens"], row["completion_tokens"],
            row["cached_tokens"]))
    assert spent_usd(live) == pytest.approx(sum(r["cost_usd"] for r in rows))
    return rows


def assert_released_and_uncached(live: LiveProxy, requests: int,
                                 served_by: str = "upstream") -> None:
    """After a failed request: the next one is admitted (slot and reservation released)
    and answered by `served_by` (the upstream: nothing was cached from the failure)."""
    assert spent_usd(live) < reservation_usd()  # so a second reservation fits: if released
    assert ask(live)
    rows = assert_settled(live, requests + 1)
    assert rows[-1]["status"] == 200 and rows[-1]["stage"] == served_by
