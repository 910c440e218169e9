"""The budget stage's rules applied to pass-through requests.

A pass-through request holds what it can be known to cost before it goes: an
embeddings request its input tokens at the model's price (what it will be billed),
anything else the smallest amount there is, so that a key with nothing left of its
budget is refused (429 `insufficient_quota`, as chat is) while others go on. The
hold is settled to what the answer was billed (`passthrough_usage.Bill`), or
released when it had no usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from proxy import tokens
from proxy.config import KeyConfig
from proxy.pipeline.core import Context, Reply
from proxy.pipeline.stages.budget import Budget, key_ask
from proxy.store.limits import NANOS_PER_USD, Ask, to_nanos

SMALLEST_HOLD_USD = 1 / NANOS_PER_USD
DEFAULT_EMBEDDING_MODEL = "text-embedding-ada-002"  # what OpenAI assumed without a model


def embedding_input_tokens(body: Mapping[str, Any]) -> int:
    """Tokens of an embeddings request's `input`: strings are counted with the model's
    tokenizer, token arrays by their length."""
    model = str(body.get("model") or DEFAULT_EMBEDDING_MODEL)
    value = body.get("input")
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(i, int) for i in items):
        return len(items)  # one input given as token ids
    return sum(tokens.count_text(i, model) if isinstance(i, str)
               else len(i) if isinstance(i, list) else 0 for i in items)


def _input_chars(body: Mapping[str, Any]) -> int:
    value = body.get("input")
    items = value if isinstance(value, list) else [value]
    return sum(len(i) for i in items if isinstance(i, str))


class PassthroughBudget(Budget):
    """The pipeline's budget stage for one pass-through request."""

    def __init__(self, budget: Budget, *, embeddings: bool) -> None:
        super().__init__(budget.rules, budget.limits, budget.prices, budget.timezone,
                         budget.alerts, budget.daily_usd)
        self.embeddings = embeddings

    async def estimate(self, ctx: Context, key: KeyConfig) -> Ask:
        """Embeddings: input tokens at the model's price; anything else: the smallest hold."""
        used = 0
        if self.embeddings:
            if _input_chars(ctx.body) > tokens.OFF_LOOP_CHARS:
                used = await asyncio.to_thread(embedding_input_tokens, ctx.body)
            else:
                used = embedding_input_tokens(ctx.body)
        cost = max(self.prices.cost(ctx.model or DEFAULT_EMBEDDING_MODEL, used, 0)
                   if self.embeddings else 0.0, SMALLEST_HOLD_USD)
        return key_ask(key, used, cost, self.timezone, self.rules.reservation_seconds)

    def billed(self, ctx: Context, reply: Reply | None) -> tuple[int, int] | None:
        """What the answer's Bill says (a batch's tokens are not per-minute tokens)."""
        bill = ctx.passthrough_bill
        if bill is None or reply is None:
            return None
        return (0 if bill.batch else bill.usage.total_tokens), to_nanos(bill.cost_usd)
