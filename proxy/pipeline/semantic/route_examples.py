"""Routing by example: a request goes to the rule whose example requests it is nearest to.

Route rules may list example requests (`examples = ["...", ...]`, or
`examples = "packaged:strong"` / `"packaged:cheap"` for the coaching examples
that ship in `proxy/data/examples/context*.jsonl`). A request's last user message
is embedded (the same vector the caches use) and scored against each rule's
examples: the mean cosine similarity of its `K` nearest examples. The best rule
wins when it leads the runner-up by at least `margin`; otherwise no example rule
holds and the rules after it (and the alias default) decide. The decision names
the nearest examples and the margin, so a surprising route can be explained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from proxy.embed import Embedder
from proxy.learn import Once
from proxy.pipeline.semantic.paraphrase import clean_text
from proxy.pipeline.semantic.standalone import packaged_rows

K = 5
PACKAGED = "packaged:"


@dataclass(frozen=True, slots=True)
class RouteExample:
    """One example request for the rule named `rule`."""

    text: str
    rule: str


@dataclass(frozen=True, slots=True)
class Nearest:
    """The rule a vector is nearest to, its lead over the runner-up, the closest examples."""

    rule: str
    score: float
    margin: float
    examples: tuple[str, ...]


def packaged_route_examples(label: str | None = None) -> list[RouteExample]:
    """The shipped examples labelled `strong` or `cheap` (both when `label` is None)."""
    return [RouteExample(row["text"], row["route"]) for row in packaged_rows()
            if label is None or row["route"] == label]


def packaged_label(spec: str) -> str | None:
    """`"packaged:strong"` -> "strong"; None for anything else."""
    return spec[len(PACKAGED):] if spec.startswith(PACKAGED) else None


class ExampleRouter:
    """Scores a vector against each rule's example vectors (embedded once, in the background)."""

    def __init__(self, embedder: Embedder, examples: Sequence[RouteExample],
                 margin: float) -> None:
        self.embedder = embedder
        self.examples = list(examples)
        self.margin = margin
        self.rules = tuple(dict.fromkeys(e.rule for e in self.examples))
        self.fitted: Once[dict[str, tuple[np.ndarray, list[str]]]] = Once(self._embed)

    async def _embed(self) -> dict[str, tuple[np.ndarray, list[str]]]:
        texts = [clean_text(e.text) for e in self.examples]
        found = await self.embedder.embed_cached(texts)
        vectors = np.stack([found[t] for t in texts])
        by_rule: dict[str, tuple[np.ndarray, list[str]]] = {}
        for rule in self.rules:
            rows = [i for i, e in enumerate(self.examples) if e.rule == rule]
            by_rule[rule] = (vectors[rows], [self.examples[i].text for i in rows])
        return by_rule

    def nearest(self, vector: np.ndarray) -> Nearest:
        """The nearest rule (call once `fitted` is done)."""
        by_rule = self.fitted.done
        assert by_rule is not None, "await router.fitted.get() first"
        scored = []
        for rule, (matrix, texts) in by_rule.items():
            similarities = matrix @ vector
            top = np.argsort(-similarities)[:K]
            scored.append((float(similarities[top].mean()), rule, [texts[i] for i in top[:3]]))
        scored.sort(key=lambda s: s[0], reverse=True)
        best, runner_up = scored[0], scored[1] if len(scored) > 1 else (0.0, "", [])
        return Nearest(best[1], best[0], best[0] - runner_up[0], tuple(best[2]))

    async def pick(self, vector: np.ndarray) -> Nearest | None:
        """The nearest rule when it leads by `margin`, else None."""
        await self.fitted.get()
        found = self.nearest(vector)
        return found if found.margin >= self.margin else None
