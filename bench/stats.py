"""Stats speed on a large ledger: what one dashboard refresh asks of sqlite.

Builds (once, reused afterwards) a ledger of N rows over 30 days (4 keys, 4 models, a
mix of stages and statuses), then times `stats()` the way the dashboard and the API
call it: totals only and group_by day/key/model/stage, plus the recommendations. Each
call is timed `--repeat` times on a fresh connection; the median wall time and the
median CPU time of the process are printed (CPU time is steadier on a shared machine).

    python bench/stats.py --rows 100000 --db /tmp/stats-bench.db
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

import aiosqlite

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.observe.recommend import recommendations  # noqa: E402
from proxy.observe.stats import create_stats_index, stats  # noqa: E402
from proxy.observe.window import DAY, Window  # noqa: E402
from proxy.pricing import PriceTable  # noqa: E402
from proxy.store.ledger import Ledger, LedgerEntry  # noqa: E402
from proxy.store.sqlite import open_db  # noqa: E402

END = 1_740_823_200.0
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini")
STAGES = ("upstream",) * 7 + ("exact_cache", "semantic_cache", "pattern", "error")


def _entry(rng: random.Random, i: int) -> LedgerEntry:
    stage = rng.choice(STAGES)
    status = 429 if stage == "error" else rng.choice((200,) * 30 + (500,))
    model = rng.choice(MODELS)
    return LedgerEntry(
        request_id=f"req_{i}", ts=END - rng.random() * 30 * DAY,
        tenant=f"key{rng.randrange(4)}", namespace="ns", requested_model=model,
        model=model if rng.random() < 0.8 else "gpt-4o-mini", stage=stage,
        prompt_tokens=rng.randrange(50, 3000), completion_tokens=rng.randrange(10, 800),
        cost_usd=rng.random() / 100, baseline_usd=rng.random() / 50,
        latency_ms=rng.lognormvariate(5, 1), status=status, stream=False, trace="[]",
        prompt_hash=f"{rng.randrange(5000):x}", max_tokens=rng.choice((None, 4096)),
        upstream_ms=None)


async def _build(path: Path, rows: int) -> None:
    db = await open_db(str(path))
    ledger = Ledger(db, batch=10 ** 9)
    await ledger.start()
    rng = random.Random(7)
    for i in range(rows):
        ledger.record(_entry(rng, i))
    await ledger.close()
    await db.close()


async def _time(path: Path, repeat: int, call: str) -> tuple[float, float]:
    prices = PriceTable()
    window = Window.parse(str(END - 30 * DAY), str(END + 1))
    wall, cpu = [], []
    for _ in range(repeat):
        async with aiosqlite.connect(path.resolve().as_uri() + "?mode=ro", uri=True) as db:
            start, start_cpu = time.perf_counter(), time.process_time()
            if call == "recommendations":
                await recommendations(db, window, prices)
            else:
                await stats(db, window, prices, None if call == "totals" else call)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", default="/tmp/stats-bench.db")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    path = Path(args.db)
    if not path.exists():
        await _build(path, args.rows)
    # the indexes `serve` creates at startup
    db = await open_db(str(path))
    ledger = Ledger(db)
    await ledger.start()
    await ledger.close()
    await create_stats_index(db)
    await db.close()
    refresh = [0.0, 0.0]
    print(f"{'call':16} {'wall ms':>8} {'cpu ms':>8}  (medians of {args.repeat})")
    for call in ("totals", "day", "key", "model", "stage", "recommendations"):
        wall, cpu = await _time(path, args.repeat, call)
        if call in ("day", "key", "recommendations"):
            refresh = [refresh[0] + wall, refresh[1] + cpu]
        print(f"{call:16} {wall * 1000:8.1f} {cpu * 1000:8.1f}")
    print(f"{'dashboard':16} {refresh[0] * 1000:8.1f} {refresh[1] * 1000:8.1f}  "
          "(day + key + recommendations)")


if __name__ == "__main__":
    asyncio.run(main())
