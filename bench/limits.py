"""Added latency of the per-key limit checks, in-process (+ sqlite spend) and Redis.

Drives the limit store the way the admission and budget stages do for one request:
`admit` (rpm + concurrency) and `reserve` (tpm + budget) before upstream is the
check that delays every request; `settle` + `finish` run after the answer. N
concurrent workers share one key (the worst case: one hot key). Also measures
the two stages end to end (token counting included).

Each concurrency runs twice: with an upstream that answers at once (a closed loop
that saturates the process and Redis: the latency is then queueing, c / throughput)
and with an upstream that takes `--upstream-ms` on average (100 ms, uniformly 50-150 ms,
still faster than any LLM; the spread keeps the workers from moving in lockstep),
which is what 64 concurrent requests of a real proxy look like (at c=1 the upstream
time changes nothing, so that run is skipped).

    python bench/limits.py --requests 5000 --concurrency 1 64 --upstream-ms 0 100
"""

from __future__ import annotations

import argparse
import asyncio
import random
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
from proxy.pipeline.core import Context, Pipeline, Reply, Usage
from proxy.pipeline.stages import admission, budget
from proxy.pricing import PriceTable
from proxy.store.limits import Ask, Limits, LimitStore
from proxy.store.limits_local import LocalLimits
from proxy.store.limits_redis import RedisLimits
from proxy.store.redis_client import fail_fast_client
from proxy.store.redis_mux import RedisMux
from proxy.store.spend import SqliteSpend
from proxy.store.sqlite import open_db

LIMITS = Limits(rpm=10**9, tpm=10**12, max_concurrent=10**6)
KEY = KeyConfig(name="bench", sha256="0" * 64, namespace="bench", rpm=10**9, tpm=10**12,
                max_concurrent=10**6, budget_usd=10**6)
BODY = {"model": "gpt-4o-mini", "max_tokens": 64,
        "messages": [{"role": "user", "content": "How do budgets and rate limits work?"}]}


def percentiles(samples: list[float]) -> str:
    """p50 and p99 of second samples, in milliseconds."""
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1000:7.3f} ms   p99 {p99 * 1000:7.3f} ms"


async def drive(n: int, concurrency: int, one: object, stagger_s: float = 0.0) -> list[float]:
    """`n` calls of `one` from `concurrency` workers, each starting within `stagger_s`."""
    samples: list[float] = []
    remaining = iter(range(n))

    async def worker() -> None:
        await asyncio.sleep(random.uniform(0, stagger_s))
        for _ in remaining:
            samples.append(await one())  # type: ignore[operator]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


async def bench_store(store: LimitStore, n: int, concurrency: int,
                      upstream_s: float) -> dict[str, list[float]]:
    """Time each store call of a request's life (admit, reserve, settle, finish)."""
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
        if upstream_s:
            await asyncio.sleep(random.uniform(0.5, 1.5) * upstream_s)
        t2b = time.perf_counter()
        await store.settle("bench", token, 90, 900, month, day)
        t3 = time.perf_counter()
        await store.finish("bench", token)
        t4 = time.perf_counter()
        for name, took in zip(parts, (t1 - t0, t2 - t1, t3 - t2b, t4 - t3)):
            parts[name].append(took)
        return t2 - t0

    await drive(min(n, 500), concurrency, one, upstream_s)  # warm-up
    for samples in parts.values():
        samples.clear()
    before = await drive(n, concurrency, one, upstream_s)
    return {**parts, "admit+reserve (before upstream)": before}


async def bench_stages(store: LimitStore, n: int, concurrency: int,
                       upstream_s: float) -> dict[str, list[float]]:
    """Time whole requests through the admission and budget stages, and through none."""
    async def upstream(ctx: Context) -> Reply:
        ctx.upstream_ms = random.uniform(0.5, 1.5) * upstream_s * 1000.0
        if upstream_s:
            await asyncio.sleep(ctx.upstream_ms / 1000.0)
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
            return time.perf_counter() - start - (ctx.upstream_ms or 0.0) / 1000.0

        await drive(min(n, 500), concurrency, one, upstream_s)
        results[f"pipeline - upstream, {label}"] = await drive(n, concurrency, one, upstream_s)
    return results


async def main() -> None:
    """Run every concurrency and upstream-time scenario on both stores and print them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--upstream-ms", type=float, nargs="+", default=[0.0, 100.0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_db(str(Path(tmp) / "bench.db"))
        local = LocalLimits(SqliteSpend(db))
        await local.start()
        client = fail_fast_client(args.redis_url, 1.0)
        shared = RedisLimits(RedisMux(args.redis_url, 1.0), "bench-" + secrets.token_hex(4) + ":")
        await shared.start()
        print(f"{args.requests} requests per run, one hot key")
        for concurrency in args.concurrency:
            for upstream_ms in args.upstream_ms if concurrency > 1 else [0.0]:
                scenario = f"c={concurrency} upstream {upstream_ms:g} ms"
                for name, store in (("in-process + sqlite", local), ("redis", shared)):
                    wait, started = upstream_ms / 1000, time.perf_counter()
                    runs = {**await bench_store(store, args.requests, concurrency, wait),
                            **await bench_stages(store, args.requests, concurrency, wait)}
                    done = 2 * (args.requests + min(args.requests, 500))  # warm-ups included
                    rate = done / (time.perf_counter() - started)
                    print(f"{scenario}, {name} ({rate:,.0f} requests/s)")
                    for label, samples in runs.items():
                        print(f"    {label:40s} {percentiles(samples)}")
        keys = [k async for k in client.scan_iter(match=f"{shared.prefix}*")]
        if keys:
            await client.delete(*keys)
        await shared.aclose()
        await client.aclose()
        await local.aclose()
        await db.close()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
