"""Verification of a semantic-cache candidate: local guards, synonyms, optional model judge.

Similarity finds candidates; this decides whether the stored question really asks
what the new one asks. The word-class guards of `paraphrase` run first; words
swapped between the two texts must be near-synonyms by their own embeddings
("workout" / "exercise" pass, "hamlet" / "dracula" do not); and, when configured,
a cheap model answers yes or no for candidates below `judge_below` (`Judge`): a
few tokens billed to the asking key and written to the ledger, so the savings
shown are net of them. A judge that fails or has no room in the key's budget
counts as a "no": a miss costs one answer, a wrong hit a wrong answer.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import orjson

from proxy.embed import Embedder
from proxy.errors import ProxyError
from proxy.pipeline.charges import KeyCharges, internal_call_entry
from proxy.pipeline.core import Context, Usage
from proxy.pipeline.paraphrase import content_gap, features, pair_conflict
from proxy.pricing import PriceTable
from proxy.store.ledger import Ledger

log = logging.getLogger("proxy.semantic")

JUDGE_PROMPT = ("Two users asked a chat assistant these questions. Would one correct answer "
                "serve both equally well? Answer only yes or no.\nQ1: {a}\nQ2: {b}")


class PairVerifier:
    """Says why a stored question is not the new question (None: it is the same)."""

    def __init__(self, embedder: Embedder, synonym_similarity: float) -> None:
        self.embedder = embedder
        self.synonym_similarity = synonym_similarity

    async def conflict(self, question: str, stored: str) -> str | None:
        """The first reason the two questions differ by the local checks, or None."""
        why = pair_conflict(question, stored)
        if why:
            return why
        only_q, only_s = content_gap(question, stored)
        if only_q and not await self._synonyms(only_q, only_s, question, stored):
            return f"content words differ ({', '.join(sorted(only_q))} / " \
                   f"{', '.join(sorted(only_s))})"
        return None

    async def _synonyms(self, only_q: set[str], only_s: set[str], question: str,
                        stored: str) -> bool:
        words_q, words_s = sorted(features(question).content), sorted(features(stored).content)
        vectors = await self.embedder.embed_cached(words_q + words_s)
        return (self._bridged(only_q, words_s, vectors)
                and self._bridged(only_s, words_q, vectors))

    def _bridged(self, words: set[str], others: list[str], vectors: dict[str, np.ndarray]) -> bool:
        if not others:
            return False
        other = np.stack([vectors[w] for w in others])
        return all(float((other @ vectors[w]).max()) >= self.synonym_similarity for w in words)



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
