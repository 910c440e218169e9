"""Whether a chat message stands alone: a learned classifier over the local embedding.

An answer may be reused for another conversation only when it cannot depend on
the conversation or on who asks. Each message is put in one of four classes:

- `standalone`: a general question whose answer is the same for anyone;
- `conversation`: refers to earlier turns ("so what's step two?", "simpler pls");
- `own_state`: about the user's own record, goals or plan ("am i making progress");
- `chat`: not a question (greetings, reports, feelings).

The model is a least-squares linear classifier (`proxy.learn`) over the
message's embedding plus the `followup` rules as evidence features (they add
evidence, they never decide alone). It is fitted at start-up, in a worker
thread, from the examples that ship in `proxy/data/examples/context*.jsonl` plus
the operator's own (`[context.examples]` in the rules; a process fits each set
once), and a message counts as standalone
only when its standalone score reaches the threshold calibrated on out-of-fold
scores so that at most `max_dependent_rate` of the messages admitted are
not standalone.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from proxy import fit_cache
from proxy.config import Section
from proxy.embed import Embedder
from proxy.kept import KeptKey
from proxy.learn import LinearModel, Once, calibrate, choose_l2, fit
from proxy.pipeline.analysis import LastMessage, Verdict
from proxy.pipeline.core import Context
from proxy.pipeline.semantic.followup import context_dependence, signals
from proxy.pipeline.semantic.paraphrase import clean_text
from proxy.pipeline.text import MAX_ANALYZED_CHARS, content_text

if TYPE_CHECKING:
    from proxy.resources import Resources

log = logging.getLogger("proxy.standalone")

CLASSES = ("chat", "conversation", "own_state", "standalone")
STANDALONE = "standalone"


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled message."""

    text: str
    label: str


CONTEXT_FILES = ("context.jsonl", "context_shared_tune.jsonl")


def packaged_rows() -> list[dict[str, str]]:
    """The labelled messages that ship with the proxy (see data/examples/README.md)."""
    folder = importlib.resources.files("proxy") / "data" / "examples"
    return [json.loads(line) for name in CONTEXT_FILES
            for line in (folder / name).read_text("utf-8").splitlines() if line.strip()]


def packaged_examples() -> list[Example]:
    """The shipped messages labelled by context."""
    return [Example(row["text"], row["context"]) for row in packaged_rows()]


@dataclass(frozen=True, slots=True)
class ContextRules:
    """The rules' `[context]` table: the error rate tolerated and extra examples."""

    max_dependent_rate: float = 0.02
    examples: tuple[Example, ...] = ()


def parse_context_rules(section: Section) -> ContextRules:
    """Validate `[context]`: `max_dependent_rate` and `[context.examples]` lists
    (`standalone = [...]`, `conversation = [...]`, `own_state = [...]`, `chat = [...]`)."""
    section.reject_unknown({"max_dependent_rate", "examples"})
    rate = section.float("max_dependent_rate", ContextRules().max_dependent_rate, minimum=0.0)
    if rate >= 1.0:
        raise section.error(f"must be below 1, got {rate}", "max_dependent_rate")
    table = section.sub("examples")
    table.reject_unknown(set(CLASSES))
    examples = tuple(Example(text, label) for label in CLASSES
                     for text in table.strs(label, ()))
    return ContextRules(rate, examples)


def features(vectors: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """Model input: each text's embedding beside its rule signals."""
    return np.hstack([vectors, np.stack([signals(t) for t in texts])])


@dataclass(frozen=True, slots=True)
class FittedClassifier:
    """A fitted model with its calibrated standalone threshold and out-of-fold figures."""

    model: LinearModel
    threshold: float
    oof_precision: float
    oof_recall: float

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fit as arrays (`fit_cache.save`)."""
        m = self.model
        return {"weights": m.weights, "mean": m.mean, "scale": m.scale,
                "classes": np.array(m.classes),
                "calibration": np.array([self.threshold, self.oof_precision, self.oof_recall])}

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> FittedClassifier:
        """The fit `to_arrays` stored."""
        threshold, precision, recall = (float(v) for v in a["calibration"])
        model = LinearModel(a["weights"], a["mean"], a["scale"],
                            tuple(str(c) for c in a["classes"]))
        return cls(model, threshold, precision, recall)


def fit_classifier(x: np.ndarray, labels: Sequence[str],
                   max_dependent_rate: float) -> FittedClassifier:
    """Fit on all examples (L2 chosen by out-of-fold log-loss); calibrate the threshold
    on the out-of-fold scores."""
    l2, oof = choose_l2(x, labels)
    positive = np.array([label == STANDALONE for label in labels])
    scores = oof[:, CLASSES.index(STANDALONE)]
    threshold = calibrate(scores, positive, max_dependent_rate)
    admitted = scores >= threshold
    precision = float(positive[admitted].mean()) if admitted.any() else 1.0
    recall = float(admitted[positive].mean()) if positive.any() else 0.0
    return FittedClassifier(fit(x, labels, l2, classes=CLASSES), threshold, precision, recall)


_FITTED: dict[tuple[object, ...], FittedClassifier] = {}


class ContextClassifier:
    """Classifies messages as standalone or not; fitted in the background at start-up."""

    def __init__(self, embedder: Embedder, examples: Sequence[Example],
                 max_dependent_rate: float) -> None:
        unknown = {e.label for e in examples} - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown example labels {sorted(unknown)}; use {CLASSES}")
        self.embedder = embedder
        self.examples = list(examples)
        self.max_dependent_rate = max_dependent_rate
        self.fitted = Once(self._fit)

    async def _fit(self) -> FittedClassifier:
        await self.embedder.wait_ready()
        key = (tuple(self.examples), self.max_dependent_rate, self.embedder.variant)
        return await fit_cache.fitted("context-classifier", key, _FITTED,
                                      FittedClassifier.from_arrays, self._fit_now)

    async def _fit_now(self) -> FittedClassifier:
        texts = [clean_text(e.text) for e in self.examples]
        found = await self.embedder.embed_cached(texts)
        vectors = np.stack([found[t] for t in texts])
        labels = [e.label for e in self.examples]
        fitted = await asyncio.to_thread(
            fit_classifier, features(vectors, texts), labels, self.max_dependent_rate)
        log.info("context classifier: %d examples, standalone threshold %.3f "
                 "(out-of-fold precision %.3f, recall %.3f)", len(labels),
                 fitted.threshold, fitted.oof_precision, fitted.oof_recall)
        return fitted

    async def classify(self, text: str, vector: np.ndarray | None = None) -> Verdict:
        """The verdict for `text` (its cleaned embedding may be passed in)."""
        fitted = await self.fitted.get()
        if len(text) > MAX_ANALYZED_CHARS:
            return Verdict("chat", 0.0, False, "too long to be a reusable question")
        cleaned = clean_text(text)
        if vector is None:
            vector = await self.embedder.embed(cleaned)
        scores = fitted.model.scores(features(vector[None, :], [cleaned]))[0]
        label = CLASSES[int(np.argmax(scores))]
        p = float(scores[CLASSES.index(STANDALONE)])
        standalone = p >= fitted.threshold
        if standalone:
            why = f"standalone (score {p:.2f} >= {fitted.threshold:.2f})"
        else:
            rule = context_dependence(text)
            why = f"{label} (standalone score {p:.2f} < {fitted.threshold:.2f})" + (
                f"; rules: {rule}" if rule else "")
        return Verdict(label, p, standalone, why)


class MessageAnalyzer:
    """Embeds and classifies a request's last user message once; stages share the result."""

    def __init__(self, embedder: Embedder, classifier: ContextClassifier) -> None:
        self.embedder = embedder
        self.classifier = classifier

    @property
    def ready(self) -> bool:
        """True once the model is loaded and the classifier fitted (`/ready` waits for it)."""
        return self.embedder.ready and self.classifier.fitted.done is not None

    def start(self) -> None:
        """Begin loading the model and fitting the classifier."""
        self.embedder.start()
        self.classifier.fitted.start()

    async def analyze(self, ctx: Context) -> LastMessage | None:
        """The last user message analysed (memoized on `ctx`), or None when it is not
        plain text or too long to be a reusable question."""
        if ctx.analyzed:
            return ctx.last_message
        ctx.analyzed = True
        messages = ctx.messages
        if not messages or messages[-1].get("role") != "user":
            return None
        content = messages[-1].get("content")
        if isinstance(content, list) and not all(
                isinstance(p, dict) and p.get("type") == "text" for p in content):
            return None
        text = content_text(content)
        if not text.strip() or len(text) > MAX_ANALYZED_CHARS:
            return None
        cleaned = clean_text(text)
        vector = await self.embedder.embed(cleaned)
        ctx.last_message = LastMessage(text, cleaned, vector,
                                       await self.classifier.classify(text, vector))
        return ctx.last_message


CONTEXT_RULES: KeptKey[ContextRules] = KeptKey("context_rules")
EMBEDDER: KeptKey[Embedder] = KeptKey("embedder")
ANALYZER: KeptKey[MessageAnalyzer] = KeptKey("analyzer")
ANALYZER_RULES: KeptKey[ContextRules] = KeptKey("analyzer_rules")


def analyzer_of(resources: Resources) -> MessageAnalyzer:
    """The process's analyzer for the rules in force (`configure` sets them): one
    embedder for the process, a classifier refitted only when the rules change."""
    rules = resources.kept.get(CONTEXT_RULES) or ContextRules()
    current = resources.kept.get(ANALYZER)
    if current is not None and resources.kept.get(ANALYZER_RULES) == rules:
        return current
    embedder = resources.kept.setdefault(
        EMBEDDER, lambda: Embedder(backend=resources.config.embedding_backend))
    classifier = ContextClassifier(embedder, [*packaged_examples(), *rules.examples],
                                   rules.max_dependent_rate)
    analyzer = resources.kept.replace(ANALYZER, MessageAnalyzer(embedder, classifier))
    resources.kept.replace(ANALYZER_RULES, rules)
    analyzer.start()
    return analyzer
