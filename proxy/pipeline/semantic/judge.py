"""The optional model judge of a semantic-cache candidate.

The learned pair model (`pair_model`) decides first; when configured, a cheap
model answers yes or no for the candidates it accepted below `judge_below`: a
few tokens billed to the asking key and written to the ledger, so the savings
shown are net of them. A judge that fails or has no room in the key's budget
counts as a "no": a miss costs one answer, a wrong hit a wrong answer.
"""

from __future__ import annotations

import logging
import time

import orjson

from proxy.errors import ProxyError
from proxy.pipeline.charges import KeyCharges, internal_call_entry
from proxy.pipeline.core import Context, Usage
from proxy.pricing import PriceTable
from proxy.store.ledger import Ledger

log = logging.getLogger("proxy.semantic")

JUDGE_PROMPT = ("Two users asked a chat assistant these questions. Would one correct answer "
                "serve both equally well? Answer only yes or no.\nQ1: {a}\nQ2: {b}")


class Judge:
    """Asks `model` whether one answer serves both questions, for similarities below
    `below`; billed to the asking key and recorded in the ledger."""

    def __init__(self, model: str, below: float, charges: KeyCharges, ledger: Ledger,
                 prices: PriceTable) -> None:
        self.model, self.below = model, below
        self.charges, self.ledger, self.prices = charges, ledger, prices

    async def differ(self, ctx: Context, question: str, stored: str) -> str | None:
        """Why the judge rejects the pair (its "no", or its failure), or None for "yes"."""
        if ctx.dry_run:
            return "would ask the judge model (no upstream calls in a dry run)"
        body = {"model": self.model, "max_tokens": 1, "temperature": 0,
                "messages": [{"role": "user",
                              "content": JUDGE_PROMPT.format(a=question, b=stored)}]}
        started = time.perf_counter()
        try:
            answer = await self.charges.complete_for(ctx)(body)
        except ProxyError as exc:
            log.warning("semantic judge failed, treating as a miss: %s", exc)
            return f"judge model {self.model} unavailable ({exc.code or exc.type})"
        self.ledger.record(internal_call_entry(
            ctx, self.prices, self.model, Usage.from_openai(answer.get("usage")), started,
            "semantic_cache", "judge", orjson.dumps({"matched": stored}).decode()))
        choices = answer.get("choices") or [{}]
        content = str((choices[0].get("message") or {}).get("content") or "")
        if content.strip().lower().startswith("yes"):
            return None
        return f"judge model {self.model} said they differ"
