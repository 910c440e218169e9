"""Cache benchmarks.

    python bench/cache.py exact [--entries 10000] [--lookups 2000] [--requests 300]
    python bench/cache.py semantic     # search/embed latency, lookups/s at c=64
    python bench/cache.py paraphrase   # precision/recall per threshold on the dev pairs
    python bench/cache.py workload     # wrong answers when replaying the dev workload

`exact`: the exact cache's lookup latency (request key + store read of a stored
entry) on sqlite and on redis, and the latency of a hit through the live proxy
against a miss (the fake upstream answers at once, so a miss costs only the
proxy and the local fake: the gap shown is the least a hit saves). The machine
is shared: compare numbers measured in the same run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp
import orjson
import redis.asyncio
import semantic  # noqa: E402  (bench/semantic.py)

from proxy.pipeline.replies import make_completion
from proxy.pipeline.stages.exact_cache import exact_entries, request_key
from proxy.store.cache_entries import CacheEntries
from proxy.store.kv import KVStore, SqliteKV
from proxy.store.redis_kv import RedisKV
from proxy.store.sqlite import open_db
from proxy.testing import LiveProxy

REDIS_URL = "redis://127.0.0.1:6379/0"
# share = "all": this measures the lookup path; with the default "standalone" a request
# that names no user is stored only when classified standalone (see README, Caches)
EXACT_ONLY = 'pipeline = ["exact_cache"]\n\n[exact_cache]\nshare = "all"\n'


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50 and p99 of millisecond samples, rounded to microseconds."""
    ordered = sorted(samples_ms)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3)}


async def timed(calls: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    """Milliseconds taken by each of `calls` sequential awaits of call(i)."""
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        await call(i)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


# ---------------------------------------------------------------- exact cache

def exact_request(i: int) -> dict[str, Any]:
    """A typical chat request body, distinct per i."""
    return {"model": "gpt-4o", "temperature": 0.2, "messages": [
        {"role": "system", "content": "You are a helpful support assistant. " * 8},
        {"role": "user", "content": f"Question {i}: how do I reset my password?"}]}


async def exact_lookup(kv: KVStore, entries: int, lookups: int) -> dict[str, float]:
    """p50/p99 of key + read of a stored entry, in a namespace holding `entries` answers."""
    cache = CacheEntries(kv, "exact")
    answer = orjson.dumps({"completion": make_completion("gpt-4o", "Go to settings. " * 40,
                                                         prompt_tokens=120,
                                                         completion_tokens=160),
                           "stored_at": time.time()})
    for i in range(entries):
        await kv.put(cache.ns("bench"), request_key(exact_request(i), "bench", "gpt-4o", False),
                     answer, 3600)

    async def lookup(i: int) -> None:
        key = request_key(exact_request(i % entries), "bench", "gpt-4o", False)
        assert await cache.get("bench", key) is not None

    result = percentiles(await timed(lookups, lookup))
    key_only = percentiles(await timed(lookups, _key_only))
    await kv.purge(cache.ns("bench"))
    return {**result, "key_p50_ms": key_only["p50_ms"]}


async def _key_only(i: int) -> None:
    request_key(exact_request(i), "bench", "gpt-4o", False)


async def exact_lookups(entries: int, lookups: int) -> dict[str, dict[str, float]]:
    """Lookup latency on both backends."""
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_db(str(Path(tmp) / "bench.db"))
        sqlite_kv = SqliteKV(db)
        await sqlite_kv.start()
        on_sqlite = await exact_lookup(sqlite_kv, entries, lookups)
        await db.close()
    client = redis.asyncio.from_url(REDIS_URL)
    on_redis = await exact_lookup(RedisKV(client, f"bench-{secrets.token_hex(4)}:"), entries,
                                  lookups)
    await client.aclose()
    return {"sqlite": on_sqlite, "redis": on_redis}


async def _hits_and_misses(live: LiveProxy, stream: bool, requests: int) -> dict[str, Any]:
    """Store `requests` answers, then alternate a repeat (hit) with a new request (miss),
    so both kinds are measured under the same machine load."""
    headers = {"Authorization": f"Bearer {live.key()}", "Content-Type": "application/json"}
    bodies = [orjson.dumps({**exact_request(i), "stream": stream}) for i in range(2 * requests)]
    async with aiohttp.ClientSession() as session:
        async def post(i: int) -> None:
            async with session.post(f"{live.base_url}/chat/completions", data=bodies[i],
                                    headers=headers) as resp:
                await resp.read()
                assert resp.status == 200

        await timed(requests, post)
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
            exact_entries(live.resources).drain(), live.loop))
        samples = await timed(2 * requests, lambda j: post(j // 2 + (j % 2) * requests))
    return {"hit": percentiles(samples[0::2]), "miss": percentiles(samples[1::2])}


def exact_through_proxy(requests: int, backend: str,
                        rules: str = EXACT_ONLY) -> dict[str, Any]:
    """Latency of hits and misses through the live proxy, as JSON and as SSE."""
    prefix = f"bench-{secrets.token_hex(4)}:"
    config = ({"storage": {"backend": "redis", "redis_url": REDIS_URL, "redis_prefix": prefix}}
              if backend == "redis" else None)
    with tempfile.TemporaryDirectory() as tmp, LiveProxy(
            Path(tmp), rules=rules, config=config) as live:
        live.fake.record = False
        results = {"json": asyncio.run(_hits_and_misses(live, False, requests)),
                   "sse": asyncio.run(_hits_and_misses(live, True, requests))}
        live.run(live.resources.kv.purge("exact:alice"))
    return results


def run_exact(args: argparse.Namespace) -> dict[str, Any]:
    """The exact cache's numbers."""
    return {
        "lookup": asyncio.run(exact_lookups(args.entries, args.lookups)),
        "proxy_sqlite": exact_through_proxy(args.requests, "sqlite"),
        "proxy_redis": exact_through_proxy(args.requests, "redis"),
    }


def main() -> None:
    """Run the chosen benchmark and print its numbers as JSON."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    exact = sub.add_parser("exact", help="exact cache: lookup latency, hit vs miss")
    exact.add_argument("--entries", type=int, default=10_000)
    exact.add_argument("--lookups", type=int, default=2_000)
    exact.add_argument("--requests", type=int, default=300)
    exact.set_defaults(run=lambda args: print(orjson.dumps(
        run_exact(args), option=orjson.OPT_INDENT_2).decode()))
    semantic.add_commands(sub)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
