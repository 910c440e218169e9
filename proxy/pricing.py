"""Dollar prices per model and the cost of a request.

Prices are USD per 1M tokens (input, output), OpenAI's list prices; config.toml's
`[pricing.models]` overrides or adds entries. Embedding models bill input tokens only;
work sent through the Batch API costs BATCH_PRICE_FACTOR of the list price. A dated snapshot
(`gpt-4o-mini-2024-07-18`) is priced as its longest known prefix; a model that
matches nothing is priced at the configured default and flagged as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "chatgpt-4o-latest": (5.00, 15.00),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "text-embedding-3-small": (0.02, 0.00),
    "text-embedding-3-large": (0.13, 0.00),
    "text-embedding-ada-002": (0.10, 0.00),
}
BATCH_PRICE_FACTOR = 0.5  # the Batch API's discount on the list price


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M input and output tokens; `known` is False for the fallback price."""

    input: float
    output: float
    known: bool = True

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for the given token counts."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


class PriceTable:
    """Looks up a model's price: exact name, then longest known prefix, then default."""

    def __init__(
        self,
        overrides: Mapping[str, tuple[float, float]] | None = None,
        default: tuple[float, float] = (2.50, 10.00),
    ) -> None:
        self._prices = {**DEFAULT_PRICES, **(overrides or {})}
        self._by_length = sorted(self._prices, key=len, reverse=True)
        self._default = Price(*default, known=False)
        self._memo: dict[str, Price] = {}

    def price(self, model: str) -> Price:
        """The price of `model`."""
        found = self._memo.get(model)
        if found is None:
            found = self._lookup(model)
            if len(self._memo) < 4096:
                self._memo[model] = found
        return found

    def _lookup(self, model: str) -> Price:
        name = model.split("/", 1)[1] if model.startswith("openai/") else model
        if name in self._prices:
            return Price(*self._prices[name])
        for known in self._by_length:
            if name.startswith(known + "-"):
                return Price(*self._prices[known])
        return self._default

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for a completion of `model` with these token counts."""
        return self.price(model).cost(prompt_tokens, completion_tokens)

    def batch_cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for the same tokens run through the Batch API."""
        return self.cost(model, prompt_tokens, completion_tokens) * BATCH_PRICE_FACTOR
