"""Semantic cache benchmarks (run through bench/cache.py: semantic, paraphrase, workload).

- `latency`: vector search p50 at 1k/10k/100k entries, embed p50, embed+search p50 for
  one request, and lookups/s (embed + search + verify) under 64 concurrent requests.
- `paraphrase`: precision/recall on shared/data/paraphrase_dev.jsonl (else the repo's
  held-out pairs, bench/data/heldout_pairs.jsonl) per threshold, raw cosine against the
  learned pair model's verification, and per pair kind at the default rules.
- `workload`: replays shared/data/workload_dev.jsonl (else bench/data/workload_own.jsonl)
  in order through the real stage (in-memory store) and counts right and wrong semantic
  hits, plus the standalone classifier's admissions of context-dependent events.
Neither data set was used to fit the models (they fit on proxy/data/examples/).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from common import data_file

from proxy.auth import Tenant
from proxy.embed import DIMENSIONS, Embedder, backend_choice
from proxy.embed_backends import embed_dtype
from proxy.embed_inputs import embed_threads
from proxy.pipeline.core import Context, Reply, Usage
from proxy.pipeline.replies import make_completion
from proxy.pipeline.semantic.index import (
    ANN_MIN_ROWS,
    INLINE_SEARCH_ROWS,
    SemanticEntries,
    VectorIndex,
)
from proxy.pipeline.semantic.pair_model import PairModel, packaged_pairs
from proxy.pipeline.semantic.paraphrase import clean_text
from proxy.pipeline.semantic.standalone import ContextClassifier, MessageAnalyzer, packaged_examples
from proxy.pipeline.stages.semantic_cache import Rules, SemanticCache
from proxy.store.kv import SqliteKV
from proxy.store.sqlite import open_db

THRESHOLDS = (0.70, 0.75, 0.80, 0.82, 0.85, 0.88, 0.90, 0.93)


def analysis(embedder: Embedder) -> tuple[MessageAnalyzer, PairModel]:
    """The shipped classifier and pair model over `embedder`, default rates."""
    rules = Rules()
    classifier = ContextClassifier(embedder, packaged_examples(), 0.02)
    return (MessageAnalyzer(embedder, classifier),
            PairModel(embedder, packaged_pairs(), rules.threshold, rules.max_wrong_rate))


def read_jsonl(name: str) -> list[dict[str, Any]]:
    """Every line of a shared/data JSONL file."""
    return [orjson.loads(line) for line in data_file(name).read_bytes().splitlines() if line]


def p50_ms(samples: list[float]) -> float:
    """Median of second samples, in milliseconds."""
    return round(statistics.median(samples) * 1000, 3)


def _unit_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.standard_normal((n, DIMENSIONS)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _search_p50(index: VectorIndex, probes: np.ndarray) -> float:
    samples = []
    for q in probes:
        start = time.perf_counter()
        index.search(q, 4)
        samples.append(time.perf_counter() - start)
    return p50_ms(samples)


async def latency(sizes: tuple[int, ...] = (1_000, 10_000, 100_000), queries: int = 200,
                  concurrency: int = 64, lookups: int = 640) -> dict[str, Any]:
    """Search, embed and lookup latency, and lookups/s under concurrency."""
    rng = np.random.default_rng(7)
    result: dict[str, Any] = {"load_average_at_start": os.getloadavg(),
                              "embed_threads": embed_threads(), "embed_dtype": embed_dtype(),
                              "embed_backend": backend_choice(),
                              "ann_min_rows": ANN_MIN_ROWS,
                              "search_p50_ms": {}, "brute_force_search_p50_ms": {}}
    index = VectorIndex()
    for size in sizes:
        rows = _unit_rows(size, rng)
        exact = VectorIndex(capacity=size, ann_min_rows=size + 1)
        index = VectorIndex(capacity=size)
        for i, row in enumerate(rows):
            exact.add(str(i), row)
            index.add(str(i), row)
        if index.wants_ann_build():
            start = time.perf_counter()
            await index.build_ann()
            result[f"ann_build_s_at_{size}"] = round(time.perf_counter() - start, 2)
            near = rows[:queries] + 0.3 * _unit_rows(queries, rng)
            near /= np.linalg.norm(near, axis=1, keepdims=True)
            result[f"ann_top1_equals_brute_force_at_{size}"] = float(np.mean(
                [index.search(q, 1)[0][0] == exact.search(q, 1)[0][0] for q in near]))
        probes = _unit_rows(queries, rng)
        result["search_p50_ms"][size] = _search_p50(index, probes)
        result["brute_force_search_p50_ms"][size] = _search_p50(exact, probes)
        del exact
    texts = [clean_text(e["text"]) for e in read_jsonl("workload_dev.jsonl")
             if not e["context_dependent"]]
    embedder = Embedder()
    _, verifier = analysis(embedder)
    await verifier.fitted.get()
    await embedder.wait_ready()
    await embedder.embed("warm up")
    embed_s, both_s = [], []
    for text in texts[:60]:
        start = time.perf_counter()
        vector = await embedder.embed(text + " ")
        embed_s.append(time.perf_counter() - start)
        index.search(vector, 4)
        both_s.append(time.perf_counter() - start)
    result["embed_p50_ms"] = p50_ms(embed_s)
    result[f"embed_plus_search_p50_ms_at_{len(index)}"] = p50_ms(both_s)
    first = await embedder.embed(texts[0])
    calls_before, words_before = embedder.encode_calls, len(embedder._cached)
    queue = collections.deque(texts[i % len(texts)] + " ?" * (i // len(texts))
                              for i in range(lookups))

    async def worker() -> None:
        while queue:
            text = queue.popleft()
            vector = await embedder.embed(text)
            if index.ann is None and len(index) > INLINE_SEARCH_ROWS:
                await asyncio.to_thread(index.search, vector, 4)
            else:
                index.search(vector, 4)
            await verifier.score(text, texts[0], vector, first)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    result[f"lookups_per_s_c{concurrency}_at_{len(index)}"] = round(lookups / elapsed, 1)
    result["encode_calls_for_lookups"] = embedder.encode_calls - calls_before
    result["words_embedded_by_verify_for_lookups"] = len(embedder._cached) - words_before
    result["load_average_at_end"] = os.getloadavg()
    await embedder.aclose()
    return result


async def paraphrase(rules: Rules = Rules()) -> dict[str, Any]:
    """Precision/recall of raw cosine and of the pair model on the dev pairs."""
    pairs = read_jsonl("paraphrase_dev.jsonl")
    embedder = Embedder()
    _, verifier = analysis(embedder)
    texts = sorted({clean_text(t) for p in pairs for t in (p["a"], p["b"])})
    vectors = dict(zip(texts, await embedder.embed_many(texts)))
    for pair in pairs:
        a, b = clean_text(pair["a"]), clean_text(pair["b"])
        pair["sim"] = float(vectors[a] @ vectors[b])
        p, needed = await verifier.score(a, b, vectors[a], vectors[b])
        pair["why"] = None if p >= needed else f"same-score {p:.2f} < {needed:.2f}"
    positives = sum(p["same"] for p in pairs)
    table = []
    for threshold in THRESHOLDS:
        row: dict[str, Any] = {"threshold": threshold}
        for label, passed in (("raw", lambda p: True), ("verified", lambda p: p["why"] is None)):
            hits = [p for p in pairs if p["sim"] >= threshold and passed(p)]
            right = sum(p["same"] for p in hits)
            row[label] = {"hits": len(hits), "recall": round(right / positives, 3),
                          "wrong_share": round(1 - right / len(hits), 3) if hits else 0.0}
        table.append(row)
    kinds: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        kind = kinds.setdefault(f"{pair['kind']} ({'same' if pair['same'] else 'different'})",
                                {"pairs": 0, "raw_hits": 0, "verified_hits": 0})
        kind["pairs"] += 1
        kind["raw_hits"] += pair["sim"] >= rules.threshold
        kind["verified_hits"] += pair["sim"] >= rules.threshold and pair["why"] is None
    await embedder.aclose()
    return {"threshold_table": table, "per_kind_at_default": kinds,
            "default_threshold": rules.threshold, "max_wrong_rate": rules.max_wrong_rate}


async def workload(rules: Rules = Rules(), conversation: bool = False) -> dict[str, Any]:
    """Replay the dev workload through the stage; count right and wrong semantic hits.

    Each event is one request from the shared app key. With `conversation`, the request
    carries the user's earlier messages (so max_prior_user_turns applies); otherwise only
    the event's own message.
    """
    events = read_jsonl("workload_dev.jsonl")
    db = await open_db(":memory:")
    kv = SqliteKV(db)
    await kv.start()
    embedder = Embedder()
    analyzer, verifier = analysis(embedder)
    entries = SemanticEntries(kv, rules.max_entries)
    stage = SemanticCache(rules, entries, analyzer, verifier)
    tenant = Tenant("app", "hash", "app")
    history: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    counts = collections.Counter()
    wrong_examples = []

    async def upstream(ctx: Context) -> Reply:
        body = orjson.dumps(make_completion(ctx.model, "answer", prompt_tokens=20,
                                            completion_tokens=80))
        return Reply(body=body, stage="upstream", usage=Usage(20, 80))

    for i, event in enumerate(events):
        user = history[event["user"]]
        message = {"role": "user", "content": event["text"]}
        messages = [*user, message] if conversation else [message]
        ctx = Context(request_id=str(i), tenant=tenant,
                      body={"model": "gpt-4o", "messages": messages})
        reply = await stage(ctx, upstream)
        user += [message, {"role": "assistant", "content": "ok"}]
        if reply.stage != "semantic_cache":
            continue
        if event["repeat_of"] is not None:
            counts["right_hits"] += 1
        else:
            counts["wrong_hits"] += 1
            counts["wrong_hits_on_context_dependent"] += event["context_dependent"]
            wrong_examples.append({"event": i, "text": event["text"],
                                   "matched": ctx.trace[-1].data.get("matched")})
    await embedder.aclose()
    await db.close()
    repeats = sum(e["repeat_of"] is not None for e in events)
    return {"events": len(events), "repeat_events": repeats, **counts,
            "wrong_share_of_events": round(counts["wrong_hits"] / len(events), 4),
            "repeats_found": round(counts["right_hits"] / repeats, 3),
            "conversation": conversation, "max_prior_user_turns": rules.max_prior_user_turns,
            "wrong_examples": wrong_examples,
            "detector": await detector(analyzer.classifier, events)}


async def detector(classifier: ContextClassifier, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The classifier's admissions: context-dependent events it let through (errors),
    and the share of context-free and of repeated events it kept out (missed savings)."""
    admitted = {e["text"]: (await classifier.classify(e["text"])).standalone for e in events}
    dependent = [e for e in events if e["context_dependent"]]
    free = [e for e in events if not e["context_dependent"]]
    repeats = [e for e in free if e["repeat_of"] is not None]
    return {
        "context_dependent_admitted": round(
            sum(admitted[e["text"]] for e in dependent) / len(dependent), 4),
        "admitted_dependent_texts": sorted({e["text"] for e in dependent if admitted[e["text"]]}),
        "kept_out_share_of_context_free": round(
            sum(not admitted[e["text"]] for e in free) / len(free), 3),
        "kept_out_share_of_repeat_events": round(
            sum(not admitted[e["text"]] for e in repeats) / len(repeats), 3),
    }


# ------------------------------------------------ commands (run from bench/cache.py)

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, result: Any) -> None:
    """Print a result and write it to bench/results/NAME.json."""
    RESULTS.mkdir(exist_ok=True)
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    (RESULTS / f"{name}.json").write_bytes(text + b"\n")
    print(text.decode())


def paraphrase_markdown(result: dict[str, Any]) -> str:
    """The README tables for a `paraphrase` result."""
    lines = ["| threshold | raw hits | raw recall | raw wrong | verified hits | verified recall "
             "| verified wrong |", "|---|---|---|---|---|---|---|"]
    for row in result["threshold_table"]:
        raw, guarded = row["raw"], row["verified"]
        lines.append(f"| {row['threshold']:.2f} | {raw['hits']} | {raw['recall']:.0%} | "
                     f"{raw['wrong_share']:.1%} | {guarded['hits']} | {guarded['recall']:.0%} | "
                     f"{guarded['wrong_share']:.1%} |")
    lines += ["", f"| kind (at threshold {result['default_threshold']}) | pairs | raw hits "
              "| verified hits |", "|---|---|---|---|"]
    for kind, row in sorted(result["per_kind_at_default"].items()):
        lines.append(f"| {kind} | {row['pairs']} | {row['raw_hits']} | {row['verified_hits']} |")
    return "\n".join(lines)


def run_semantic(args: argparse.Namespace) -> None:
    """`semantic`: latency and throughput."""
    save("semantic_latency", asyncio.run(latency(concurrency=args.concurrency,
                                                          lookups=args.lookups)))


def run_paraphrase(args: argparse.Namespace) -> None:
    """`paraphrase`: the precision/recall table."""
    result = asyncio.run(paraphrase())
    save("semantic_paraphrase", result)
    print(paraphrase_markdown(result))


def run_workload(args: argparse.Namespace) -> None:
    """`workload`: wrong answers on the replay, single messages and whole conversations."""
    runs = {"single_message": asyncio.run(workload())}
    for turns in args.prior_turns:
        runs[f"conversation_max_prior_{turns}"] = asyncio.run(workload(
            Rules(max_prior_user_turns=turns), conversation=True))
    save("semantic_workload", runs)


def add_commands(sub: Any) -> None:
    """Register the `semantic`, `paraphrase` and `workload` subcommands of bench/cache.py."""
    sem = sub.add_parser("semantic", help="semantic embed/search latency and lookups/s")
    sem.add_argument("--concurrency", type=int, default=64)
    sem.add_argument("--lookups", type=int, default=640)
    sem.set_defaults(run=run_semantic)
    sub.add_parser("paraphrase", help="precision/recall on the dev pairs").set_defaults(
        run=run_paraphrase)
    work = sub.add_parser("workload", help="replay the dev workload through the stage")
    work.add_argument("--prior-turns", type=int, nargs="*", default=[4, 50])
    work.set_defaults(run=run_workload)
