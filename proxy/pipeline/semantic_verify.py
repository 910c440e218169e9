"""Verification of a semantic-cache candidate: local guards, synonyms, optional model judge.

Similarity finds candidates; this decides whether the stored question really asks
what the new one asks. The word-class guards of `paraphrase` run first; words
swapped between the two texts must be near-synonyms by their own embeddings
("workout" / "exercise" pass, "hamlet" / "dracula" do not); and, when configured,
a cheap model answers yes or no for candidates below `judge_below`.
"""

from __future__ import annotations

import logging

import numpy as np

from proxy.embed import Embedder
from proxy.errors import ProxyError
from proxy.pipeline.paraphrase import content_gap, features, pair_conflict
from proxy.upstream.client import UpstreamClient

log = logging.getLogger("proxy.semantic")

JUDGE_PROMPT = ("Two users asked a chat assistant these questions. Would one correct answer "
                "serve both equally well? Answer only yes or no.\nQ1: {a}\nQ2: {b}")


class PairVerifier:
    """Says why a stored question is not the new question (None: it is the same)."""

    def __init__(self, embedder: Embedder, synonym_similarity: float,
                 upstream: UpstreamClient | None = None, judge_model: str = "",
                 judge_below: float = 0.0) -> None:
        self.embedder = embedder
        self.synonym_similarity = synonym_similarity
        self.upstream = upstream
        self.judge_model = judge_model
        self.judge_below = judge_below

    async def conflict(self, question: str, stored: str, similarity: float,
                       dry_run: bool = False) -> str | None:
        """The first reason the two questions differ, or None."""
        why = pair_conflict(question, stored)
        if why:
            return why
        only_q, only_s = content_gap(question, stored)
        if only_q and not await self._synonyms(only_q, only_s, question, stored):
            return f"content words differ ({', '.join(sorted(only_q))} / " \
                   f"{', '.join(sorted(only_s))})"
        if self.judge_model and similarity < self.judge_below:
            if dry_run:
                return "would ask the judge model (no upstream calls in a dry run)"
            if not await self._judge(question, stored):
                return f"judge model {self.judge_model} said they differ"
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

    async def _judge(self, question: str, stored: str) -> bool:
        assert self.upstream is not None
        body = {"model": self.judge_model, "max_tokens": 1, "temperature": 0,
                "messages": [{"role": "user",
                              "content": JUDGE_PROMPT.format(a=question, b=stored)}]}
        try:
            answer = await self.upstream.complete(body)
        except ProxyError as exc:
            log.warning("semantic judge failed, treating as a miss: %s", exc)
            return False
        choices = answer.get("choices") or [{}]
        content = str((choices[0].get("message") or {}).get("content") or "")
        return content.strip().lower().startswith("yes")
