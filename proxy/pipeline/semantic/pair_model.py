"""Do two questions mean the same? A learned verifier with a calibrated error bound.

The semantic cache finds candidates by cosine similarity; this model decides
whether a candidate's answer may be served. Its input is a few pair features:
the similarity, which word-class guard of `paraphrase` fires (numbers, negation,
opposite poles, pronoun, time frame, named things, focus), how many content
words are swapped and how close the swapped words are by their own embeddings,
word overlap and lengths, and how far the two texts' difference runs along a few
contrast axes (more/less, before/after, ...) of the embedding space.
It is a random forest (`proxy.learn.Forest`: the features interact, e.g. full word
overlap is good news unless a guard fires) fitted at start-up on the labelled pairs
that ship in `proxy/data/examples/pairs*.jsonl`; the score a pair needs is
calibrated on out-of-fold predictions, among pairs above the candidate similarity,
so that at most `max_wrong_rate` of the hits served are wrong.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from proxy import fit_cache
from proxy.embed import Embedder
from proxy.learn import Forest, Once, calibrate, fit_forest, forest_out_of_fold
from proxy.pipeline.semantic.paraphrase import (
    clean_text,
    features,
    pair_conflict,
    tokens,
    unmatched,
)
from proxy.pipeline.semantic.standalone import packaged_rows

log = logging.getLogger("proxy.pair_model")

# Contrast axes: the two texts' difference vector is projected on each (the embedding of
# one pole minus the other's); "what raises cortisol" / "what lowers cortisol" differ
# along raise-lower although no word list names that pair. Evidence, not a rule.
AXES = (("increase", "decrease"), ("more", "less"), ("faster", "slower"), ("gain", "lose"),
        ("before", "after"), ("morning", "evening"), ("with", "without"), ("early", "late"),
        ("high", "low"), ("hot", "cold"), ("start", "stop"), ("good", "bad"),
        ("daily", "weekly"), ("my", "your"), ("do", "don't"), ("beginner", "advanced"))
# Who does what to whom: the order of grammatical persons ("tell her she needs" / "tell
# her I need"), which bag-of-words guards cannot see.
PERSONS = {**dict.fromkeys("i me my mine myself im ive id ill".split(), 1),
           **dict.fromkeys("you your yours yourself youre".split(), 2),
           **dict.fromkeys("he him his she her hers they them their himself herself hes shes"
                           .split(), 3)}
CONFLICTS = ("numbers", "negation", "opposite", "direction", "pronoun", "time", "named",
             "asks for")


@dataclass(frozen=True, slots=True)
class Pair:
    """Two questions and whether one answer serves both; `augmented` pairs are
    generated (light rewordings) and used for fitting, never for calibration."""

    a: str
    b: str
    same: bool
    augmented: bool = False


# Light rewordings that keep the question: the written pairs reword heavily, and their
# hard negatives share nearly all words, so without these a model learns that a full
# word overlap means "different" ("how do I descale a kettle" / "how can I ...").
_REWORDINGS = ((r"^how do i\b", "how can i"), (r"^how can i\b", "how do i"),
               (r"^what is\b", "what's"), (r"^what's\b", "what is"),
               (r"^whats\b", "what is"), (r"^is it\b", "is it really"),
               (r"^should i\b", "do you think i should"), (r"^can i\b", "is it ok to"))


def light_rewordings(questions: Sequence[str]) -> list[Pair]:
    """One reworded twin per question that a rewording applies to (else the question
    with its punctuation and case changed), as `same` pairs."""
    pairs = []
    for question in questions:
        cleaned = clean_text(question)
        twin = next((re.sub(pattern, repl, cleaned) for pattern, repl in _REWORDINGS
                     if re.search(pattern, cleaned)), None)
        if twin is None:
            twin = cleaned.rstrip("?!. ") + ("" if cleaned.endswith("?") else "?")
        pairs.append(Pair(question, twin, True, augmented=True))
    return pairs


PAIR_FILES = ("pairs.jsonl", "pairs_shared_tune.jsonl")


def packaged_pairs() -> list[Pair]:
    """The labelled pairs that ship with the proxy (both files, see data/examples/README),
    plus light rewordings of the shipped standalone questions."""
    folder = importlib.resources.files("proxy") / "data" / "examples"
    rows = [json.loads(line) for name in PAIR_FILES
            for line in (folder / name).read_text("utf-8").splitlines() if line.strip()]
    questions = [r["text"] for r in packaged_rows() if r["context"] == "standalone"]
    return [*(Pair(row["a"], row["b"], bool(row["same"])) for row in rows),
            *light_rewordings(questions)]


def _bridge(only: set[str], others: Sequence[str], vectors: dict[str, np.ndarray]) -> float:
    """How well the words of `only` are matched by some word of `others` (min over words
    of the best cosine); 1.0 when nothing needs matching."""
    if not only:
        return 1.0
    if not others:
        return 0.0
    other = np.stack([vectors[w] for w in others])
    return float(min((other @ vectors[w]).max() for w in only))


async def pair_features(embedder: Embedder, a: str, b: str, va: np.ndarray,
                        vb: np.ndarray) -> np.ndarray:
    """The model input for one pair of cleaned questions and their embeddings."""
    fa, fb = features(a), features(b)
    why = pair_conflict(a, b) or ""
    only_a, only_b = unmatched(fa.content, fb.content)
    words_a, words_b = sorted(fa.content), sorted(fb.content)
    vectors = await embedder.embed_cached(words_a + words_b) if only_a or only_b else {}
    union = len(fa.content | fb.content)
    len_a, len_b = len(a.split()), len(b.split())
    handmade = [
        float(va @ vb),
        *(float(why.startswith(c) or f" {c}" in why) for c in CONFLICTS),
        min(_bridge(only_a, words_b, vectors), _bridge(only_b, words_a, vectors)),
        (len(only_a) + len(only_b)) / max(union, 1),
        float(bool(only_a) and bool(only_b)),
        len(fa.content & fb.content) / max(union, 1),
        abs(len_a - len_b) / max(len_a, len_b, 1),
        float(min(len_a, len_b) <= 3),
    ]
    persons_a = [PERSONS[w] for w in tokens(a) if w in PERSONS]
    persons_b = [PERSONS[w] for w in tokens(b) if w in PERSONS]
    handmade.append(float(persons_a != persons_b))
    axes = await embedder.embed_cached([w for pair in AXES for w in pair])
    directions = np.stack([axes[p] - axes[n] for p, n in AXES])
    contrast = np.abs(directions @ (va - vb))
    handmade += [float(contrast.max()), float(np.sort(contrast)[-3:].mean())]
    return np.array(handmade, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class FittedVerifier:
    """The fitted model, the score a hit needs, and its out-of-fold figures."""

    model: Forest
    threshold: float
    oof_wrong_rate: float
    oof_recall: float

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fit as arrays (`fit_cache.save`)."""
        m = self.model
        return {"feature": m.feature, "split": m.threshold, "left": m.left, "right": m.right,
                "positive": m.positive,
                "calibration": np.array([self.threshold, self.oof_wrong_rate, self.oof_recall])}

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> FittedVerifier:
        """The fit `to_arrays` stored."""
        threshold, wrong, recall = (float(v) for v in a["calibration"])
        return cls(Forest(a["feature"], a["split"], a["left"], a["right"], a["positive"]),
                   threshold, wrong, recall)


def fit_verifier(x: np.ndarray, same: np.ndarray, similarity: np.ndarray,
                 written: np.ndarray, candidate_threshold: float,
                 max_wrong_rate: float) -> FittedVerifier:
    """Fit on every pair; calibrate on the out-of-fold scores of the written pairs a
    lookup would verify (similarity >= the candidate threshold)."""
    scores = forest_out_of_fold(x, same)
    seen = written & (similarity >= candidate_threshold)
    threshold = calibrate(scores[seen], same[seen], max_wrong_rate)
    hit = seen & (scores >= threshold)
    wrong = float((~same[hit]).mean()) if hit.any() else 0.0
    recall = float(hit[same & written].mean()) if (same & written).any() else 0.0
    return FittedVerifier(fit_forest(x, same), threshold, wrong, recall)


_FITTED: dict[tuple[object, ...], FittedVerifier] = {}  # one fit per process and pair set


class PairModel:
    """Says whether a stored question may answer a new one; fitted in the background."""

    def __init__(self, embedder: Embedder, pairs: Sequence[Pair], candidate_threshold: float,
                 max_wrong_rate: float) -> None:
        self.embedder = embedder
        self.pairs = list(pairs)
        self.candidate_threshold = candidate_threshold
        self.max_wrong_rate = max_wrong_rate
        self.fitted = Once(self._fit)

    @property
    def ready(self) -> bool:
        """True once fitted (`/ready` waits for it)."""
        return self.fitted.done is not None

    async def _fit(self) -> FittedVerifier:
        await self.embedder.wait_ready()
        key = (tuple(self.pairs), self.candidate_threshold, self.max_wrong_rate,
               self.embedder.variant)
        return await fit_cache.fitted("pair-verifier", key, _FITTED, FittedVerifier.from_arrays,
                                      self._fit_now)

    async def _fit_now(self) -> FittedVerifier:
        a = [clean_text(p.a) for p in self.pairs]
        b = [clean_text(p.b) for p in self.pairs]
        found = await self.embedder.embed_cached(a + b)
        va, vb = np.stack([found[t] for t in a]), np.stack([found[t] for t in b])
        x = np.stack([await pair_features(self.embedder, *row) for row in zip(a, b, va, vb)])
        same = np.array([p.same for p in self.pairs])
        written = np.array([not p.augmented for p in self.pairs])
        similarity = np.einsum("ij,ij->i", va, vb)
        fitted = await asyncio.to_thread(
            fit_verifier, x, same, similarity, written, self.candidate_threshold,
            self.max_wrong_rate)
        log.info("pair verifier: %d pairs, p(same) >= %.3f (out-of-fold wrong %.3f, "
                 "recall %.3f)", len(same), fitted.threshold, fitted.oof_wrong_rate,
                 fitted.oof_recall)
        return fitted

    async def score(self, question: str, stored: str, vq: np.ndarray,
                          vs: np.ndarray) -> tuple[float, float]:
        """The pair's score for "same" and the score a hit needs."""
        fitted = await self.fitted.get()
        x = await pair_features(self.embedder, question, stored, vq, vs)
        return fitted.model.score(x), fitted.threshold
