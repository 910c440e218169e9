"""Price lookup and cost."""

from __future__ import annotations

import pytest

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
