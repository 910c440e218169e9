"""Added latency of the per-key limit checks, in-process (+ sqlite spend) and Redis.

Drives the limit store the way the admission and budget stages do for one request:
`admit` (rpm + concurrency) and `reserve` (tpm + budget) before upstream is the
check that delays every request; `settle` + `finish` run after the answer. N
concurrent workers share one key (the worst case: one hot key). Also measures
the two stages end to end over a no-op upstream (token counting included).

    python bench/limits.py --requests 5000 --concurrency 1 64
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.auth import Tenant
from proxy.config import KeyConfig
from proxy.periods import current_period
from proxy.pipeline import admission, budget
from proxy.pipeline.core import Context, Pipeline, Reply, Usage
from proxy.pricing import PriceTable
from proxy.store.limits import Ask, Limits, LimitStore
from proxy.store.limits_local import LocalLimits
from proxy.store.limits_redis import RedisLimits, limits_client
from proxy.store.spend import SqliteSpend
from proxy.store.sqlite import open_db

LIMITS = Limits(rpm=10**9, tpm=10**12, max_concurrent=10**6)
KEY = KeyConfig(name="bench", sha256="0" * 64, namespace="bench", rpm=10**9, tpm=10**12,
                max_concurrent=10**6, budget_usd=10**6)
BODY = {"model": "gpt-4o-mini", "max_tokens": 64,
        "messages": [{"role": "user", "content": "How do budgets and rate limits work?"}]}


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1000:7.3f} ms   p99 {p99 * 1000:7.3f} ms"


async def drive(n: int, concurrency: int, one: object) -> list[float]:
    samples: list[float] = []
    remaining = iter(range(n))

    async def worker() -> None:
        for _ in remaining:
            samples.append(await one())  # type: ignore[operator]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


async def bench_store(store: LimitStore, n: int, concurrency: int) -> dict[str, list[float]]:
    month = current_period("month", "UTC", time.time())
    day = current_period("day", "UTC", time.time())
    ask = Ask(tokens=100, cost=1000, tpm=LIMITS.tpm, budget=10**15, period=month,
              lease_seconds=600)
    parts: dict[str, list[float]] = {"admit": [], "reserve": [], "settle": [], "finish": []}

    async def one() -> float:
        token = secrets.token_hex(8)
        t0 = time.perf_counter()
        await store.admit("bench", token, LIMITS, 600)
        t1 = time.perf_counter()
        await store.reserve("bench", token, ask)
        t2 = time.perf_counter()
        await store.settle("bench", token, 90, 900, month, day)
        t3 = time.perf_counter()
        await store.finish("bench", token)
        t4 = time.perf_counter()
        for name, took in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[name].append(took)
        return t2 - t0

    await drive(min(n, 500), concurrency, one)  # warm-up
    for samples in parts.values():
        samples.clear()
    before = await drive(n, concurrency, one)
    return {**parts, "admit+reserve (before upstream)": before}


async def bench_stages(store: LimitStore, n: int, concurrency: int) -> dict[str, list[float]]:
    async def upstream(ctx: Context) -> Reply:
        return Reply(body=b"{}", usage=Usage(12, 64), model=ctx.model)

    with_limits = Pipeline([admission.Admission(admission.Rules(), store),
                            budget.Budget(budget.Rules(), store, PriceTable(), "UTC", None, ())],
                           upstream)
    bare = Pipeline([], upstream)
    tenant = Tenant.from_key(KEY)
    results = {}
    for label, pipeline in (("no stages", bare), ("admission+budget", with_limits)):
        async def one(pipeline: Pipeline = pipeline) -> float:
            ctx = Context(request_id="b", tenant=tenant, body=dict(BODY))
            start = time.perf_counter()
            await pipeline(ctx)
            return time.perf_counter() - start

        await drive(min(n, 500), concurrency, one)
        results[f"pipeline, {label}"] = await drive(n, concurrency, one)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_db(str(Path(tmp) / "bench.db"))
        local = LocalLimits(SqliteSpend(db))
        await local.start()
        client = limits_client(args.redis_url, 1.0)
        shared = RedisLimits(client, "bench-" + secrets.token_hex(4))
        await shared.start()
        print(f"{args.requests} requests per run, one hot key")
        for concurrency in args.concurrency:
            for name, store in (("in-process + sqlite", local), ("redis", shared)):
                runs = {**await bench_store(store, args.requests, concurrency),
                        **await bench_stages(store, args.requests, concurrency)}
                for label, samples in runs.items():
                    print(f"  c={concurrency:<3d} {name:20s} {label:30s} {percentiles(samples)}")
        keys = [k async for k in client.scan_iter(match=f"{shared.prefix}:*")]
        if keys:
            await client.delete(*keys)
        await shared.aclose()
        await local.aclose()
        await db.close()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
