"""One bench command: overhead, cache and savings in one run, saved as JSON and Markdown.

    python -m bench [--quick] [--only overhead,cache,savings] [--targets direct,bare,...]
                    [--out bench/results]

- overhead: the fake upstream directly, the proxy with `pipeline = []` (bare), with the
  shipped rules (rules/config.toml), the shipped rules with `--workers 2`, and LiteLLM's
  proxy on the same fake upstream when it is installed (`BENCH_LITELLM=/path/to/litellm`,
  else a `litellm` on PATH next to an importable `litellm`); plain and streamed requests
  at c=1, 32 and 128 (bench/overhead.py).
- cache: the exact cache's lookup on sqlite and redis, and a hit against a miss through
  the live proxy (bench/cache.py exact).
- savings: the coaching workload's held-out users replayed through the shipped rules
  (bench/savings.py), with `model="auto"` and with gpt-4o.

Writes `bench.json` and `bench.md` to the output directory and prints the Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import cache  # noqa: E402  (bench/cache.py)
import overhead  # noqa: E402  (bench/overhead.py)
import savings  # noqa: E402  (bench/savings.py)
from tqdm import tqdm  # noqa: E402  (a dependency of sentence-transformers)

SECTIONS = ("overhead", "cache", "savings")
SHIPPED_RULES = BENCH.parent / "rules" / "config.toml"
Step = Callable[[str], None]


@dataclass(frozen=True)
class Sizes:
    """How much each section does: requests per concurrency level, exact-cache entries
    and lookups, requests through the proxy, and replayed events (None: all)."""

    requests: dict[int, int]
    cache_entries: int
    cache_lookups: int
    cache_requests: int
    savings_events: int | None
    savings_models: tuple[str, ...]
    model_free: bool = False  # cache and savings on rules that load no embedding model


FULL = Sizes({1: 2000, 32: 4000, 128: 4000}, 10_000, 2_000, 300, None, ("auto", "gpt-4o"))
QUICK = Sizes({1: 300, 32: 600, 128: 600}, 1_000, 200, 50, 150, ("auto",))
SMOKE = Sizes({1: 20, 32: 40, 128: 130}, 50, 20, 5, 10, ("auto",), model_free=True)
# An exact cache that shares every answer needs no standalone classifier (no model).
MODEL_FREE_RULES = cache.EXACT_ONLY  # exact cache only, shared: no embedding model loads


def find_litellm() -> str | None:
    """The litellm CLI to compare against: $BENCH_LITELLM, else one on PATH when the
    `litellm` package is importable here."""
    chosen = os.environ.get("BENCH_LITELLM")
    if chosen:
        return chosen
    if importlib.util.find_spec("litellm") is None:
        return None
    return shutil.which("litellm")


def overhead_targets(names: list[str], litellm: str | None) -> dict[str, overhead.Target]:
    """The chosen overhead targets; LiteLLM only when it was found."""
    rules = SHIPPED_RULES.read_text()
    known = {
        "direct": overhead.Target("direct"),
        "bare": overhead.Target("proxy"),
        "rules": overhead.Target("proxy", rules=rules, share=0.5),
        "rules_workers2": overhead.Target("proxy", rules=rules, workers=2, share=0.5),
        "litellm": overhead.Target("litellm", litellm=litellm or "", share=0.1),
    }
    unknown = set(names) - set(known)
    if unknown:
        raise SystemExit(f"unknown targets: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(known)})")
    return {name: known[name] for name in ["direct", *names]
            if name != "litellm" or litellm}


def run_overhead(targets: dict[str, overhead.Target], sizes: Sizes,
                 step: Step) -> dict[str, Any]:
    """Added latency and throughput per target."""
    return overhead.run_targets(targets, sizes.requests, step)


def run_cache(sizes: Sizes, step: Step) -> dict[str, Any]:
    """The exact cache: lookup latency per backend, hit vs miss through the proxy."""
    result = {"entries": sizes.cache_entries,
              "lookup": asyncio.run(cache.exact_lookups(sizes.cache_entries,
                                                        sizes.cache_lookups))}
    step("cache lookup")
    rules = cache.EXACT_ONLY
    for backend in ("sqlite", "redis"):
        result[f"proxy_{backend}"] = cache.exact_through_proxy(sizes.cache_requests, backend,
                                                               rules)
        step(f"cache through the proxy on {backend}")
    return result


def run_savings(sizes: Sizes, rules: str, step: Step) -> dict[str, Any]:
    """The held-out users of the workload replayed once per model the app asks for."""
    workload = savings.workload_path()
    events = savings.load_events(workload, sizes.savings_events, heldout=True)
    result: dict[str, Any] = {"workload": str(workload), "replays": []}
    for model in sizes.savings_models:
        result["replays"].append(savings.replay(events, rules, model=model))
        step(f"savings model={model}")
    return result


def cache_table(result: dict[str, Any]) -> str:
    """Markdown: exact-cache lookups and hits vs misses through the proxy."""
    lines = ["| exact cache | p50 ms | p99 ms |", "|---|---|---|"]
    for backend, numbers in result["lookup"].items():
        lines.append(f"| lookup, {backend} ({result['entries']:,} entries) | "
                     f"{numbers['p50_ms']:.3f} | {numbers['p99_ms']:.3f} |")
    for backend in ("sqlite", "redis"):
        for shape, kinds in result[f"proxy_{backend}"].items():
            for kind, numbers in kinds.items():
                lines.append(f"| {kind} through the proxy, {backend}, {shape} | "
                             f"{numbers['p50_ms']:.3f} | {numbers['p99_ms']:.3f} |")
    return "\n".join(lines)


def savings_table(result: dict[str, Any]) -> str:
    """Markdown: one row per replay."""
    lines = ["| app asks for | events | answered by | upstream models | cost / baseline | "
             "saved | wrong free answers | deep questions fresh on the strong model |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["replays"]:
        answered = ", ".join(f"{k} {v}" for k, v in r["answered_by"].items())
        models = ", ".join(f"{k} {v:,}" for k, v in r["upstream_models"].items())
        wrong = r["pattern_replies_to_non_greetings"] + r["cache_hits_wrong"]
        lines.append(f"| {r['model']} | {r['events']:,} | {answered} | {models} | "
                     f"${r['cost_usd']:.2f} / ${r['baseline_usd']:.2f} | {r['saved']} | "
                     f"{wrong} | {r['deep_events_answered_fresh_by_strong_model']} |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The whole run as Markdown: how it was made, then a table per section."""
    parts = [f"# Bench run {report['when']}", "",
             f"`{report['command']}` (load average at start {report['load_average']})", ""]
    if "overhead" in report:
        parts += ["## Overhead", "", overhead.table(report["overhead"]), "",
                  f"LiteLLM: {report['litellm']}", ""]
    if "cache" in report:
        parts += ["## Exact cache", "", cache_table(report["cache"]), ""]
    if "savings" in report:
        parts += ["## Savings", "", f"Workload: `{report['savings']['workload']}` "
                  "(held-out users)", "", savings_table(report["savings"]), ""]
    return "\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="short runs (a few minutes)")
    preset.add_argument("--smoke", action="store_true",
                        help="seconds-long runs without the embedding model (cache and "
                             "savings on an exact cache that shares all answers): checks "
                             "that the bench works, measures nothing worth quoting")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--targets", default=None,
                        help="overhead targets besides direct: bare, rules, rules_workers2, "
                             "litellm (default: all; with --smoke: bare)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per concurrency level (overrides the preset)")
    parser.add_argument("--savings-events", type=int, default=None,
                        help="replay only the first N held-out events (overrides the preset)")
    parser.add_argument("--rules", default=None,
                        help="rule file for the savings replay (default: the shipped rules)")
    parser.add_argument("--out", default=str(BENCH / "results"),
                        help="directory for bench.json and bench.md")
    args = parser.parse_args(argv)
    args.sections = [s for s in args.only.split(",") if s]
    if set(args.sections) - set(SECTIONS):
        parser.error(f"--only takes {', '.join(SECTIONS)}")
    return args


def sized(args: argparse.Namespace) -> Sizes:
    """The preset, with the command line's overrides."""
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.requests:
        sizes = replace(sizes, requests={c: args.requests for c in sizes.requests},
                        cache_requests=min(sizes.cache_requests, args.requests))
    if args.savings_events:
        sizes = replace(sizes, savings_events=args.savings_events)
    return sizes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen sections, write bench.json and bench.md, print the Markdown."""
    args = parse_args(argv)
    sizes = sized(args)
    litellm = find_litellm()
    chosen = args.targets or ("bare" if args.smoke else "bare,rules,rules_workers2,litellm")
    targets = overhead_targets([t for t in chosen.split(",") if t], litellm)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "load_average": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "litellm": litellm or "not installed (set BENCH_LITELLM=/path/to/litellm)",
    }
    if "overhead" in args.sections and not litellm:
        print("LiteLLM is not installed here: its proxy is not measured "
              "(set BENCH_LITELLM=/path/to/litellm)", file=sys.stderr)
    steps = {"overhead": len(targets) * 2 * len(sizes.requests), "cache": 3,
             "savings": len(sizes.savings_models)}
    with tqdm(total=sum(steps[s] for s in args.sections), unit="run", file=sys.stderr,
              dynamic_ncols=True) as bar:
        def step(done: str) -> None:
            bar.set_postfix_str(done)
            bar.update()

        if "overhead" in args.sections:
            report["overhead"] = run_overhead(targets, sizes, step)
        if "cache" in args.sections:
            report["cache"] = run_cache(sizes, step)
        if "savings" in args.sections:
            rules = (Path(args.rules).read_text() if args.rules
                     else MODEL_FREE_RULES if sizes.model_free else SHIPPED_RULES.read_text())
            report["savings"] = run_savings(sizes, rules, step)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    (out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "bench.md").write_text(text)
    print(text)
    return report
