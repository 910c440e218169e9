"""Cache benchmarks.

    python bench/cache.py semantic     # search/embed latency, lookups/s at c=64
    python bench/cache.py paraphrase   # precision/recall per threshold on the dev pairs
    python bench/cache.py workload     # wrong answers when replaying the dev workload

Results are printed and saved under bench/results/. The machine is shared: compare
numbers measured in the same run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import orjson  # noqa: E402

import semantic  # noqa: E402
from proxy.pipeline.semantic_cache import Rules  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, result: Any) -> None:
    """Print a result and write it to bench/results/NAME.json."""
    RESULTS.mkdir(exist_ok=True)
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    (RESULTS / f"{name}.json").write_bytes(text + b"\n")
    print(text.decode())


def paraphrase_markdown(result: dict[str, Any]) -> str:
    """The README tables for a `paraphrase` result."""
    lines = ["| threshold | raw hits | raw recall | raw wrong | guarded hits | guarded recall "
             "| guarded wrong |", "|---|---|---|---|---|---|---|"]
    for row in result["threshold_table"]:
        raw, guarded = row["raw"], row["guarded"]
        lines.append(f"| {row['threshold']:.2f} | {raw['hits']} | {raw['recall']:.0%} | "
                     f"{raw['wrong_share']:.1%} | {guarded['hits']} | {guarded['recall']:.0%} | "
                     f"{guarded['wrong_share']:.1%} |")
    lines += ["", f"| kind (at threshold {result['default_threshold']}) | pairs | raw hits "
              "| guarded hits |", "|---|---|---|---|"]
    for kind, row in sorted(result["per_kind_at_default"].items()):
        lines.append(f"| {kind} | {row['pairs']} | {row['raw_hits']} | {row['guarded_hits']} |")
    return "\n".join(lines)


def run_semantic(args: argparse.Namespace) -> None:
    """`semantic`: latency and throughput."""
    save("semantic_latency", asyncio.run(semantic.latency(concurrency=args.concurrency,
                                                          lookups=args.lookups)))


def run_paraphrase(args: argparse.Namespace) -> None:
    """`paraphrase`: the precision/recall table."""
    result = asyncio.run(semantic.paraphrase())
    save("semantic_paraphrase", result)
    print(paraphrase_markdown(result))


def run_workload(args: argparse.Namespace) -> None:
    """`workload`: wrong answers on the replay, single messages and whole conversations."""
    runs = {"single_message": asyncio.run(semantic.workload())}
    for turns in args.prior_turns:
        runs[f"conversation_max_prior_{turns}"] = asyncio.run(semantic.workload(
            Rules(max_prior_user_turns=turns), conversation=True))
    save("semantic_workload", runs)


def main() -> None:
    """Parse the subcommand and run it."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sem = sub.add_parser("semantic", help="semantic embed/search latency and lookups/s")
    sem.add_argument("--concurrency", type=int, default=64)
    sem.add_argument("--lookups", type=int, default=640)
    sem.set_defaults(run=run_semantic)
    sub.add_parser("paraphrase", help="precision/recall on the dev pairs").set_defaults(
        run=run_paraphrase)
    work = sub.add_parser("workload", help="replay the dev workload through the stage")
    work.add_argument("--prior-turns", type=int, nargs="*", default=[4, 50])
    work.set_defaults(run=run_workload)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
