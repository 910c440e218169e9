"""Accuracy of the learned decisions, on data they were fitted on and on held-out data.

    python bench/learned.py [--json bench/results/learned.json]

Three models, each fitted only on what ships in `proxy/data/examples/` (the "tune"
data; its figures are out-of-fold, i.e. every example scored by a model fitted
without it):

- context classifier (`proxy/pipeline/semantic/standalone.py`): may a message's answer be
  reused for another conversation? The error that matters is a non-standalone
  message admitted (a wrong answer); the other is a standalone question refused
  (a missed saving).
- pair verifier (`proxy/pipeline/semantic/pair_model.py`): among candidate pairs above the
  similarity threshold, the share of hits that are wrong and the recall.
- router (`route` rules with `examples`): share of strong-model messages sent to
  the strong model, and of cheap ones kept cheap.

Held-out sets: `bench/data/heldout_*.jsonl` (written by another author than the
training examples, never used for fitting or for choosing any setting) and, when
present, the halves of `../shared/data` that were not shipped as training examples: the
workload events of the 60 users not in `proxy/data/examples/context_shared_tune.jsonl`
whose text is not among the shipped ones (split by user and by text), and the dev
paraphrase pairs not in `proxy/data/examples/pairs_shared_tune.jsonl`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.embed import Embedder
from proxy.pipeline.semantic.pair_model import PairModel, packaged_pairs, pair_features
from proxy.pipeline.semantic.paraphrase import clean_text
from proxy.pipeline.semantic.route_examples import ExampleRouter, packaged_route_examples
from proxy.pipeline.semantic.standalone import (
    STANDALONE,
    ContextClassifier,
    packaged_examples,
    packaged_rows,
)

ROOT = Path(__file__).resolve().parent.parent
OWN = ROOT / "bench" / "data"
SHARED = Path(os.environ.get("PROXY_SHARED_DATA", ROOT.parent / "shared" / "data"))
CANDIDATE_THRESHOLD = 0.75
MAX_WRONG_RATE = 0.02
MAX_DEPENDENT_RATE = 0.02


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every object of a JSON Lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rate(part: int, whole: int) -> float | None:
    """part / whole, None when whole is 0."""
    return round(part / whole, 4) if whole else None


async def context_figures(classifier: ContextClassifier, texts: Sequence[str],
                          standalone: Sequence[bool]) -> dict[str, Any]:
    """Admitted non-standalone rate (errors) and standalone recall for labelled texts."""
    admitted = [(await classifier.classify(t)).standalone for t in texts]
    dependent = [a for a, s in zip(admitted, standalone) if not s]
    wanted = [a for a, s in zip(admitted, standalone) if s]
    hits = sum(1 for a, s in zip(admitted, standalone) if a and s)
    return {"messages": len(texts),
            "non_standalone_admitted": rate(sum(dependent), len(dependent)),
            "wrong_share_of_admitted": rate(sum(admitted) - hits, sum(admitted)),
            "standalone_recall": rate(sum(wanted), len(wanted))}


async def workload_context(classifier: ContextClassifier,
                           events: list[dict[str, Any]]) -> dict[str, Any]:
    """On the trace: context-dependent events admitted (errors), repeats admitted."""
    admitted = [(await classifier.classify(e["text"])).standalone for e in events]
    dependent = [a for a, e in zip(admitted, events) if e["context_dependent"]]
    repeats = [a for a, e in zip(admitted, events) if e["repeat_of"] is not None]
    return {"events": len(events),
            "context_dependent_admitted": rate(sum(dependent), len(dependent)),
            "repeats_admitted": rate(sum(repeats), len(repeats))}


async def pair_figures(embedder: Embedder, model: PairModel,
                       pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Hits (similarity >= candidate threshold and p(same) >= calibrated), wrong share,
    recall, and wrong hits per kind."""
    fitted = await model.fitted.get()
    a = [clean_text(p["a"]) for p in pairs]
    b = [clean_text(p["b"]) for p in pairs]
    va, vb = await embedder.embed_many(a), await embedder.embed_many(b)
    hits, wrong_kinds = [], Counter()
    for i, pair in enumerate(pairs):
        similarity = float(va[i] @ vb[i])
        x = await pair_features(embedder, a[i], b[i], va[i], vb[i])
        hit = similarity >= model.candidate_threshold and \
            fitted.model.score(x) >= fitted.threshold
        hits.append(hit)
        if hit and not pair["same"]:
            wrong_kinds[pair["kind"]] += 1
    same = [p["same"] for p in pairs]
    right = sum(1 for h, s in zip(hits, same) if h and s)
    return {"pairs": len(pairs), "hits": sum(hits),
            "wrong_share_of_hits": rate(sum(hits) - right, sum(hits)),
            "recall": rate(right, sum(same)), "wrong_by_kind": dict(wrong_kinds)}


async def route_figures(router: ExampleRouter, embedder: Embedder,
                        rows: list[tuple[str, bool]]) -> dict[str, Any]:
    """Strong messages routed strong, cheap ones kept cheap."""
    vectors = await embedder.embed_many([clean_text(t) for t, _ in rows])
    picked = [router.nearest(v).rule == "strong" for v in vectors]
    strong = [p for p, (_, s) in zip(picked, rows) if s]
    cheap = [not p for p, (_, s) in zip(picked, rows) if not s]
    return {"messages": len(rows), "strong_to_strong": rate(sum(strong), len(strong)),
            "cheap_kept_cheap": rate(sum(cheap), len(cheap))}


async def decision_ms(classifier: ContextClassifier, pair_model: PairModel,
                      router: ExampleRouter, embedder: Embedder,
                      texts: list[str]) -> dict[str, float]:
    """Median milliseconds each decision adds to a request whose message is embedded
    already (the embedding is what the semantic cache computes anyway)."""
    cleaned = [clean_text(t) for t in texts]
    vectors = await embedder.embed_many(cleaned)
    await embedder.embed_cached([w for t in cleaned for w in t.split()])  # warm words
    timings: dict[str, list[float]] = {"classify": [], "verify_one_candidate": [], "route": []}
    for i, (text, vector) in enumerate(zip(cleaned, vectors)):
        other, other_vector = cleaned[i - 1], vectors[i - 1]
        start = time.perf_counter()
        await classifier.classify(text, vector)
        timings["classify"].append(time.perf_counter() - start)
        start = time.perf_counter()
        await pair_model.score(text, other, vector, other_vector)
        timings["verify_one_candidate"].append(time.perf_counter() - start)
        start = time.perf_counter()
        router.nearest(vector)
        timings["route"].append(time.perf_counter() - start)
    result = {k: round(statistics.median(v) * 1000, 3) for k, v in timings.items()}
    result["total"] = round(sum(result.values()), 3)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "learned.json"))
    args = parser.parse_args()
    embedder = Embedder()
    classifier = ContextClassifier(embedder, packaged_examples(), MAX_DEPENDENT_RATE)
    pair_model = PairModel(embedder, packaged_pairs(), CANDIDATE_THRESHOLD, MAX_WRONG_RATE)
    router = ExampleRouter(embedder, packaged_route_examples(), margin=0.0)
    fitted_context = await classifier.fitted.get()
    fitted_pairs = await pair_model.fitted.get()
    await router.fitted.get()
    out: dict[str, Any] = {
        "context": {"tune_out_of_fold": {
            "threshold": round(fitted_context.threshold, 4),
            "wrong_share_of_admitted": round(1 - fitted_context.oof_precision, 4),
            "standalone_recall": round(fitted_context.oof_recall, 4)}},
        "pairs": {"tune_out_of_fold": {
            "threshold": round(fitted_pairs.threshold, 4),
            "wrong_share_of_hits": round(fitted_pairs.oof_wrong_rate, 4),
            "recall": round(fitted_pairs.oof_recall, 4)}},
        "route": {},
    }
    own_messages = read_jsonl(OWN / "heldout_messages.jsonl")
    out["added_ms_p50"] = await decision_ms(classifier, pair_model, router, embedder,
                                            [m["text"] for m in own_messages[:200]])
    out["context"]["heldout_own"] = await context_figures(
        classifier, [m["text"] for m in own_messages],
        [m["context"] == STANDALONE for m in own_messages])
    out["pairs"]["heldout_own"] = await pair_figures(
        embedder, pair_model, read_jsonl(OWN / "heldout_pairs.jsonl"))
    out["route"]["heldout_own"] = await route_figures(
        router, embedder, [(m["text"], m["route"] == "strong") for m in own_messages])
    if (SHARED / "workload_dev.jsonl").exists():
        tuned = [r for r in packaged_rows() if "user" in r]
        tune_users, tune_texts = {r["user"] for r in tuned}, {clean_text(r["text"]) for r in tuned}
        events = [e for e in read_jsonl(SHARED / "workload_dev.jsonl")
                  if e["user"] not in tune_users and clean_text(e["text"]) not in tune_texts]
        out["context"]["heldout_shared_workload"] = await workload_context(classifier, events)
        tuned = {(p.a, p.b) for p in packaged_pairs() if not p.augmented}
        held = [p for p in read_jsonl(SHARED / "paraphrase_dev.jsonl")
                if (p["a"], p["b"]) not in tuned]
        out["pairs"]["heldout_shared_paraphrase_half"] = await pair_figures(
            embedder, pair_model, held)
        deep = {"deep", "pattern_analysis"}
        out["route"]["heldout_shared_workload"] = await route_figures(
            router, embedder, [(e["text"], e["kind"] in deep) for e in events
                               if e["kind"] not in {"greeting", "completion"}])
    else:
        out["shared"] = f"not found at {SHARED}: shared-data figures skipped"
    print(json.dumps(out, indent=2))
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    await embedder.aclose()


if __name__ == "__main__":
    asyncio.run(main())
