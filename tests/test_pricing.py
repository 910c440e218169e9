"""Price lookup and cost."""

from __future__ import annotations

import pytest

from proxy.pipeline.core import Usage
from proxy.pricing import PriceTable


@pytest.mark.parametrize(("model", "price", "known"), [
    ("gpt-4o", (2.50, 10.00), True),
    ("gpt-4o-mini", (0.15, 0.60), True),
    ("gpt-4o-mini-2024-07-18", (0.15, 0.60), True),
    ("gpt-4o-2024-08-06", (2.50, 10.00), True),
    ("openai/gpt-4.1-nano", (0.10, 0.40), True),
    ("my-llama", (1.0, 2.0), False),
])
def test_prices_by_exact_name_prefix_or_default(model: str, price: tuple[float, float],
                                                known: bool) -> None:
    found = PriceTable(default=(1.0, 2.0)).price(model)
    assert (found.input, found.output, found.known) == (*price, known)


def test_overrides_win_and_cost_is_per_million() -> None:
    table = PriceTable({"gpt-4o": (1.0, 4.0)})
    assert table.cost("gpt-4o", 1_000_000, 500_000) == pytest.approx(3.0)


@pytest.mark.parametrize(("model", "cached_rate"), [
    ("gpt-4o", 1.25),
    ("gpt-4o-mini", 0.075),
    ("gpt-4.1", 0.50),
    ("gpt-4.1-mini-2025-04-14", 0.10),
    ("gpt-4.1-nano", 0.025),
    ("gpt-5", 0.125),
    ("gpt-5-mini", 0.025),
    ("gpt-5-nano", 0.005),
    ("o1", 7.50),
    ("o3", 0.50),
    ("o3-mini", 0.55),
    ("o4-mini", 0.275),
    ("gpt-4-turbo", 10.00),  # no cache discount: the input price
    ("chatgpt-4o-latest", 5.00),
    ("my-llama", 1.0),  # the default price has none either
])
def test_cached_input_rates(model: str, cached_rate: float) -> None:
    assert PriceTable(default=(1.0, 2.0)).price(model).cached_rate == cached_rate


@pytest.mark.parametrize(("model", "prompt", "completion", "cached", "usd"), [
    # (prompt - cached) * input + cached * cached_input + completion * output, per 1M
    ("gpt-4o", 2000, 100, 1024, (976 * 2.50 + 1024 * 1.25 + 100 * 10.00) / 1e6),
    ("gpt-4o", 2000, 100, 0, (2000 * 2.50 + 100 * 10.00) / 1e6),
    ("gpt-5-nano", 1152, 0, 1152, 1152 * 0.005 / 1e6),
    ("gpt-4-turbo", 2000, 0, 1024, 2000 * 10.00 / 1e6),
    ("gpt-4o", 1000, 0, 5000, 1000 * 1.25 / 1e6),  # never more cached than prompt tokens
])
def test_cost_prices_cached_tokens_at_the_cached_rate(model: str, prompt: int, completion: int,
                                                      cached: int, usd: float) -> None:
    table = PriceTable()
    assert table.cost(model, prompt, completion, cached) == pytest.approx(usd, rel=1e-12)
    assert table.usage_cost(model, Usage(prompt, completion, cached)) == pytest.approx(usd,
                                                                                  rel=1e-12)


def test_overrides_may_set_a_cached_rate_or_go_without() -> None:
    table = PriceTable({"house": (1.0, 2.0, 0.25), "gpt-4o": (2.0, 8.0)})
    assert table.cost("house", 2_000_000, 0, 1_000_000) == pytest.approx(1.25)
    assert table.price("gpt-4o").cached_rate == 2.0


@pytest.mark.parametrize(("usage", "cached"), [
    ({"prompt_tokens": 2006, "completion_tokens": 300,
      "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0}}, 1920),
    ({"prompt_tokens": 20, "completion_tokens": 3}, 0),
    ({"prompt_tokens": 20, "completion_tokens": 3, "prompt_tokens_details": None}, 0),
])
def test_usage_reads_cached_tokens_from_openai_usage(usage: dict, cached: int) -> None:
    read = Usage.from_openai(usage)
    assert read is not None and read.cached_tokens == cached
    assert Usage.from_openai(read.to_openai()) == read
