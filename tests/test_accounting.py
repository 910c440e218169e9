"""Ledger rows price cached tokens, and the baseline's cached tokens follow the documented rule."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.accounting import baseline_usage, ledger_entry
from proxy.pipeline.core import Reply, Usage
from proxy.pipeline.prompt_cache import warm_cached_tokens
from proxy.pricing import PriceTable
from proxy.testing import make_context

LONG = {"role": "system", "content": "Keep answers short and kind. " * 300}
BODY: dict[str, Any] = {"model": "gpt-4o", "messages": [
    LONG, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
    {"role": "user", "content": "log my run"}]}
WARM = warm_cached_tokens(BODY)


def test_the_warm_estimate_of_this_body_is_a_cache_step() -> None:
    assert WARM >= 1024 and (WARM - 1024) % 128 == 0


def test_a_request_sent_as_the_client_sent_it_is_its_own_baseline() -> None:
    ctx = make_context(dict(BODY))
    billed = Usage(1900, 40, 0)  # upstream found nothing cached: neither would the client
    reply = Reply(stage="upstream", model="gpt-4o", usage=billed)
    assert baseline_usage(ctx, reply) == billed
    row = ledger_entry(ctx, reply, PriceTable(), status=200)
    assert row.cost_usd == row.baseline_usd == pytest.approx((1900 * 2.5 + 40 * 10) / 1e6)


def test_a_routed_request_is_compared_with_the_client_model_found_warm() -> None:
    ctx = make_context({**BODY, "model": "auto"})
    ctx.set_model("gpt-4o-mini")
    reply = Reply(stage="upstream", model="gpt-4o-mini", usage=Usage(1900, 40, 0))
    assert baseline_usage(ctx, reply) == Usage(1900, 40, WARM)


def test_a_shrunk_request_is_compared_with_the_client_request_found_warm() -> None:
    ctx = make_context(dict(BODY))
    ctx.baseline_prompt_tokens = 3000
    reply = Reply(stage="upstream", model="gpt-4o", usage=Usage(1200, 40, 1152))
    assert baseline_usage(ctx, reply) == Usage(3000, 40, max(WARM, 1152))
    row = ledger_entry(ctx, reply, PriceTable(), status=200)
    assert row.cached_tokens == 1152
    assert row.cost_usd == pytest.approx((48 * 2.5 + 1152 * 1.25 + 40 * 10) / 1e6)
    cached = max(WARM, 1152)
    assert row.baseline_usd == pytest.approx(((3000 - cached) * 2.5 + cached * 1.25
                                              + 40 * 10) / 1e6)


def test_a_free_answer_is_compared_with_the_client_request_found_warm() -> None:
    ctx = make_context(dict(BODY))
    reply = Reply(stage="exact_cache", saved_usage=Usage(1900, 40, 0))
    assert baseline_usage(ctx, reply) == Usage(1900, 40, min(WARM, 1900))
    row = ledger_entry(ctx, reply, PriceTable(), status=200)
    assert (row.cost_usd, row.cached_tokens) == (0.0, 0)
