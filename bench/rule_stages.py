"""CPU cost of the patterns and route stages per request, over the dev workload.

Each workload message is sent as the last turn of a 20-message history through one
stage in front of a stub terminal (no network); the cost of building the context and
calling the stub alone is subtracted. Numbers are noisy on a shared machine: compare
lines from the same run.

    python bench/rule_stages.py [--rules rules/config.toml] [--workload PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy import tokens
from proxy.config import load_rules_doc
from proxy.pipeline.core import Context, Next, Reply
from proxy.pipeline.stages import patterns, route
from proxy.testing import make_context, upstream_stub

HISTORY = [{"role": "system", "content": "You are a habit coach."}] + [
    {"role": "user" if i % 2 == 0 else "assistant", "content": "an earlier message " * 8}
    for i in range(20)]


async def passthrough(ctx: Context, call_next: Next) -> Reply:
    """No stage at all: the baseline."""
    return await call_next(ctx)


async def micros_per_request(stage: Any, model: str, texts: list[str]) -> float:
    """Mean wall time of one request through `stage`, in microseconds."""
    start = time.perf_counter()
    for text in texts:
        body = {"model": model, "messages": [*HISTORY, {"role": "user", "content": text}]}
        await stage(make_context(body), upstream_stub)
    return (time.perf_counter() - start) / len(texts) * 1e6


async def main() -> None:
    """Print the per-request cost of each stage."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules", default="rules/config.toml")
    parser.add_argument("--workload", default="../shared/data/workload_dev.jsonl")
    args = parser.parse_args()
    tokens.encoding("o200k_base")
    doc = load_rules_doc(args.rules)
    pattern_stage = patterns.PatternStage(patterns.parse_rules(doc.section("patterns")), "UTC",
                                          {})
    route_stage = route.RouteStage(route.parse_rules(doc.section("route")), "UTC")
    events = [json.loads(line) for line in Path(args.workload).read_text().splitlines()]
    canned = [e["text"] for e in events if e["kind"] in ("greeting", "completion")]
    other = [e["text"] for e in events if e["kind"] not in ("greeting", "completion")]
    everything = [e["text"] for e in events]
    for label, stage, model, texts in (
            ("patterns, all messages", pattern_stage, "gpt-4o", everything),
            ("patterns, greeting/completion (answered)", pattern_stage, "gpt-4o", canned),
            ("patterns, other kinds (passed on)", pattern_stage, "gpt-4o", other),
            ("route, model=auto", route_stage, "auto", everything),
            ("route, model=gpt-4o (explicit)", route_stage, "gpt-4o", everything)):
        base = await micros_per_request(passthrough, model, texts)
        cost = await micros_per_request(stage, model, texts) - base
        print(f"{label:45s} {cost:8.1f} us/request")


if __name__ == "__main__":
    asyncio.run(main())
