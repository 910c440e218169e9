"""Where the proxy's memory goes under the soak's traffic: tracemalloc in one process.

    python bench/soak_trace.py [--warmup 2000] [--requests 4000] [--rate 40] [--top 25]

The proxy (shipped rules) and the fake upstream run in this process (proxy.testing's
LiveProxy); the soak's mix (bench/soak.py) is sent for `--warmup` requests, then
tracemalloc compares a snapshot before and after `--requests` more: the lines whose
allocations grew most, and the semantic index's size. Python allocations only (faiss and
torch allocate natively, outside tracemalloc).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

from soak import KEY, Tally, send_load

from proxy.config import hash_key
from proxy.pipeline.stages.semantic_cache import ENTRIES as SEMANTIC_ENTRIES
from proxy.testing import LiveProxy

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    """Run the traffic, print the growth between the two snapshots."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    rules = (ROOT / "rules" / "config.toml").read_text()
    with tempfile.TemporaryDirectory() as tmp, LiveProxy(
            Path(tmp), rules=rules, config={"keys": {"soak": {"sha256": hash_key(KEY)}}}) as live:
        live.wait_ready()
        tally = Tally(Counter(), Counter())
        asyncio.run(send_load(live.base_url, args.rate, args.warmup / args.rate, 64, tally))
        tracemalloc.start(8)
        gc.collect()
        before = tracemalloc.take_snapshot()
        asyncio.run(send_load(live.base_url, args.rate, args.requests / args.rate, 64, tally))
        gc.collect()
        after = tracemalloc.take_snapshot()
        print(f"requests {tally.requests}, statuses {dict(tally.statuses)}")
        entries = live.resources.kept.get(SEMANTIC_ENTRIES)
        print("semantic entries:", entries and {
            ns: len(e) for ns, e in entries._entries.items()})
        for stat in after.compare_to(before, "traceback")[:args.top]:
            print(f"{stat.size_diff / 1024:+9.0f} KiB {stat.count_diff:+7d} blocks")
            for line in stat.traceback.format()[-6:]:
                print("    " + line)


if __name__ == "__main__":
    main()
