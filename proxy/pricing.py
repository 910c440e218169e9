"""Dollar prices per model and the cost of a request.

Prices are USD per 1M tokens (input, output, cached input), OpenAI's list prices;
config.toml's `[pricing.models]` overrides or adds entries. Cached input is what a
prompt token costs when the upstream read it from its prompt cache
(`usage.prompt_tokens_details.cached_tokens`); a model without a discount lists
its input price there. A dated snapshot (`gpt-4o-mini-2024-07-18`) is priced as
its longest known prefix; a model that matches nothing is priced at the
configured default and flagged as unknown. Embedding models bill input tokens only;
work sent through the Batch API costs BATCH_PRICE_FACTOR of the list price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

# (input, output) or (input, output, cached input); without the third, no cache discount.
PriceSpec = tuple[float, float] | tuple[float, float, float]

DEFAULT_PRICES: dict[str, PriceSpec] = {
    "gpt-5": (1.25, 10.00, 0.125),
    "gpt-5-mini": (0.25, 2.00, 0.025),
    "gpt-5-nano": (0.05, 0.40, 0.005),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "chatgpt-4o-latest": (5.00, 15.00),
    "o1": (15.00, 60.00, 7.50),
    "o1-mini": (1.10, 4.40, 0.55),
    "o3": (2.00, 8.00, 0.50),
    "o3-mini": (1.10, 4.40, 0.55),
    "o4-mini": (1.10, 4.40, 0.275),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "text-embedding-3-small": (0.02, 0.00),
    "text-embedding-3-large": (0.13, 0.00),
    "text-embedding-ada-002": (0.10, 0.00),
}
BATCH_PRICE_FACTOR = 0.5  # the Batch API's discount on the list price


class TokenCounts(Protocol):
    """What a bill is computed from (proxy.pipeline.core.Usage is one)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M input, output and cached input tokens (cached None: the input price);
    `known` is False for the fallback price."""

    input: float
    output: float
    cached_input: float | None = None
    known: bool = True

    @property
    def cached_rate(self) -> float:
        """USD per 1M prompt tokens read from the upstream's prompt cache."""
        return self.input if self.cached_input is None else self.cached_input

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD for the given token counts; `cached_tokens` are part of `prompt_tokens`."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        return ((prompt_tokens - cached) * self.input + cached * self.cached_rate
                + completion_tokens * self.output) / 1_000_000


class PriceTable:
    """Looks up a model's price: exact name, then longest known prefix, then default."""

    def __init__(
        self,
        overrides: Mapping[str, PriceSpec] | None = None,
        default: PriceSpec = (2.50, 10.00, 1.25),
    ) -> None:
        self._prices = {**DEFAULT_PRICES, **(overrides or {})}
        self._by_length = sorted(self._prices, key=len, reverse=True)
        self._default = replace(Price(*default), known=False)
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

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int,
             cached_tokens: int = 0) -> float:
        """USD for a completion of `model` with these token counts (`cached_tokens` of the
        prompt read from the upstream's prompt cache)."""
        return self.price(model).cost(prompt_tokens, completion_tokens, cached_tokens)

    def usage_cost(self, model: str, usage: TokenCounts) -> float:
        """USD for `usage` of `model`, its cached prompt tokens at the cached-input rate."""
        return self.cost(model, usage.prompt_tokens, usage.completion_tokens,
                         usage.cached_tokens)

    def batch_cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for the same tokens run through the Batch API."""
        return self.cost(model, prompt_tokens, completion_tokens) * BATCH_PRICE_FACTOR
