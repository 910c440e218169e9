"""Soak: steady mixed traffic through the proxy; does its memory level off, is every request billed?

    python bench/soak.py [--minutes 20] [--rate 50] [--warmup-minutes 5]
                         [--rules rules/config.toml] [--sample-seconds 10]

The proxy runs as `python -m proxy serve` with the shipped rules against the fake
upstream (both child processes). An open-loop sender starts `--rate` requests per
second, a fixed mix: chat plain and streamed with unique questions, questions
repeated from a pool (exact cache hits) and reworded (semantic cache), greetings
(pattern replies), the Responses API (stored and chained), threads runs,
pass-through embeddings, and client errors. The proxy's RSS is sampled every
`--sample-seconds`; reported: the RSS slope after warm-up in MB per 100k requests
(least squares of RSS over requests completed), and the requests that should have a
ledger row vs the rows the ledger holds after a clean shutdown (lost must be 0).
Writes bench/results/soak.json and soak.md (or under `--out-dir`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from common import ROOT, fake_upstream, free_port, spawn, wait_http, wait_ok

sys.path.insert(0, str(ROOT))
from proxy.config import hash_key  # noqa: E402

KEY = "sk-soak-tenant"
TOPICS = ("sleep", "running", "meditation", "journaling", "push-ups", "stretching", "reading",
          "hydration", "yoga", "walking", "cold showers", "screen time", "cooking", "budgeting")
ASKS = ("How do I get better at {t}?", "What is a good weekly plan for {t}?",
        "Why do I keep skipping {t} on weekends?", "How long until {t} becomes a habit?",
        "Can you give me three tips for {t} when I am tired?")
ASSISTANTS: dict[aiohttp.ClientSession, str] = {}
REWORDS = ("Quick question: {q}", "{q} Thanks!", "hey coach, {q}")


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix: how often, how many HTTP requests it sends and how
    many ledger rows they must leave."""

    name: str
    weight: int
    requests: int
    rows: int
    send: Callable[[aiohttp.ClientSession, str, int], Awaitable[int]]


def question(i: int) -> str:
    """A question nobody asked before (the index makes it unique)."""
    return ASKS[i % len(ASKS)].format(t=TOPICS[i % len(TOPICS)]) + f" (case {i})"


def pooled(i: int) -> str:
    """One of a fixed pool of 70 questions: repeats hit the exact cache."""
    return ASKS[i % len(ASKS)].format(t=TOPICS[(i // len(ASKS)) % len(TOPICS)])


async def _post(session: aiohttp.ClientSession, url: str, body: Any,
                key: str = KEY) -> tuple[int, bytes]:
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, await resp.read()


def _chat(text: Callable[[int], str], stream: bool
          ) -> Callable[[aiohttp.ClientSession, str, int], Awaitable[int]]:
    async def send(session: aiohttp.ClientSession, base: str, i: int) -> int:
        body = {"model": "gpt-4o-mini", "stream": stream,
                "messages": [{"role": "user", "content": text(i)}]}
        return (await _post(session, base + "/chat/completions", body))[0]
    return send


async def _responses(session: aiohttp.ClientSession, base: str, i: int) -> int:
    """A stored response, then a follow-up chained to it (two requests, two rows)."""
    status, raw = await _post(session, base + "/responses",
                              {"model": "gpt-4o-mini", "input": question(i)})
    if status != 200:
        return status
    follow = {"model": "gpt-4o-mini", "input": "And what if I only have ten minutes?",
              "previous_response_id": json.loads(raw)["id"], "stream": i % 2 == 0}
    return (await _post(session, base + "/responses", follow))[0]


async def _thread_run(session: aiohttp.ClientSession, base: str, i: int) -> int:
    """A new thread with one message, run to completion as a stream (the assistant is made
    once per sender session)."""
    if session not in ASSISTANTS:
        status, raw = await _post(session, base + "/assistants",
                                  {"model": "gpt-4o-mini", "instructions": "Be brief."})
        if status != 200:
            return status
        ASSISTANTS[session] = json.loads(raw)["id"]
    body = {"assistant_id": ASSISTANTS[session], "stream": True,
            "thread": {"messages": [{"role": "user", "content": question(i)}]}}
    return (await _post(session, base + "/threads/runs", body))[0]


async def _embeddings(session: aiohttp.ClientSession, base: str, i: int) -> int:
    body = {"model": "text-embedding-3-small", "input": [question(i), pooled(i)]}
    return (await _post(session, base + "/embeddings", body))[0]


async def _invalid(session: aiohttp.ClientSession, base: str, i: int) -> int:
    """A body the proxy refuses (400) after authentication, before the pipeline: no row."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": i}]}
    return (await _post(session, base + "/chat/completions", body))[0]


async def _bad_key(session: aiohttp.ClientSession, base: str, i: int) -> int:
    """An unknown key (401): no tenant, so no ledger row."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return (await _post(session, base + "/chat/completions", body, key=f"sk-wrong-{i}"))[0]


MIX = (
    Kind("chat_unique", 20, 1, 1, _chat(question, stream=False)),
    Kind("chat_unique_stream", 15, 1, 1, _chat(question, stream=True)),
    Kind("chat_repeat", 15, 1, 1, _chat(pooled, stream=False)),
    Kind("chat_repeat_stream", 5, 1, 1, _chat(pooled, stream=True)),
    Kind("chat_reworded", 8, 1, 1, _chat(lambda i: REWORDS[i % 3].format(q=pooled(i // 3)), False)),
    Kind("greeting", 5, 1, 1, _chat(lambda i: ("good morning", "thanks!", "done")[i % 3], True)),
    Kind("responses_chain", 8, 2, 2, _responses),
    Kind("thread_run", 5, 1, 1, _thread_run),
    Kind("embeddings", 10, 1, 1, _embeddings),
    Kind("invalid_body", 2, 1, 0, _invalid),
    Kind("bad_key", 2, 1, 0, _bad_key),
)


def rss_mb(pid: int) -> float:
    """Current resident memory (VmRSS) of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope_per_100k(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MB) over requests, scaled to MB per 100k requests."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 100_000


@dataclass
class Tally:
    """What the sender did: per kind, sent and statuses; requests in flight; overruns."""

    sent: Counter[str]
    statuses: Counter[str]
    requests: int = 0
    expected_rows: int = 0
    in_flight: int = 0
    skipped: int = 0


async def send_load(base: str, rate: float, seconds: float, max_in_flight: int,
                    tally: Tally) -> None:
    """Start `rate` requests a second for `seconds` (open loop; a tick with
    `max_in_flight` already open is skipped and counted), then wait for all of them."""
    weighted = [kind for kind in MIX for _ in range(kind.weight)]
    rng = random.Random(7)
    tasks: set[asyncio.Task[None]] = set()

    async def one(kind: Kind, i: int, session: aiohttp.ClientSession) -> None:
        try:
            status = await kind.send(session, base, i)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            status = type(exc).__name__  # type: ignore[assignment]
        tally.statuses[f"{kind.name}:{status}"] += 1
        tally.in_flight -= 1

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=max_in_flight)) as s:
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            if tally.in_flight >= max_in_flight:
                tally.skipped += 1
                continue
            kind = rng.choice(weighted)
            tally.sent[kind.name] += 1
            tally.requests += kind.requests
            tally.expected_rows += kind.rows
            tally.in_flight += 1
            task = asyncio.create_task(one(kind, i, s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)


async def sample_rss(pid: int, every: float, tally: Tally,
                     samples: list[dict[str, float]], stop: asyncio.Event) -> None:
    """Every `every` seconds: elapsed seconds, requests started, RSS in MB."""
    start = time.monotonic()
    while not stop.is_set():
        samples.append({"t": round(time.monotonic() - start, 1), "requests": tally.requests,
                        "rss_mb": round(rss_mb(pid), 1)})
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass


def start_proxy(tmp: Path, upstream: str, rules: Path) -> tuple[Any, str, Path]:
    """The proxy as a child process with one tenant key; returns it, its /v1 URL, its db."""
    port, db = free_port(), tmp / "soak.db"
    (tmp / "config.toml").write_text(
        f'[server]\nport = {port}\n[[upstreams]]\nname = "fake"\nbase_url = "{upstream}"\n'
        f'[keys.soak]\nsha256 = "{hash_key(KEY)}"\n[storage]\nsqlite_path = "{db}"\n')
    proc = spawn([sys.executable, "-m", "proxy", "serve", "--config", str(tmp / "config.toml"),
                  "--rules", str(rules)], env={"HF_HUB_OFFLINE": "1"})
    wait_ok(f"http://127.0.0.1:{port}/ready")
    return proc, f"http://127.0.0.1:{port}/v1", db


def ledger_rows(db: Path) -> dict[str, int]:
    """Rows in the ledger per source."""
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT source, COUNT(*) FROM ledger GROUP BY source"))


def run(minutes: float, rate: float, warmup_minutes: float, rules: Path,
        sample_seconds: float, max_in_flight: int) -> dict[str, Any]:
    """The whole soak; returns the report."""
    with tempfile.TemporaryDirectory() as tmpdir:
        fport = free_port()
        fake = fake_upstream(fport)
        upstream = f"http://127.0.0.1:{fport}/v1"
        wait_http(upstream + "/models")
        proxy = None
        try:
            proxy, base, db = start_proxy(Path(tmpdir), upstream, rules)
            tally = Tally(Counter(), Counter())
            samples: list[dict[str, float]] = []

            async def go() -> None:
                stop = asyncio.Event()
                sampler = asyncio.create_task(
                    sample_rss(proxy.pid, sample_seconds, tally, samples, stop))
                await send_load(base, rate, minutes * 60, max_in_flight, tally)
                stop.set()
                await sampler

            started = time.monotonic()
            asyncio.run(go())
            elapsed = time.monotonic() - started
            samples.append({"t": round(elapsed, 1), "requests": tally.requests,
                            "rss_mb": round(rss_mb(proxy.pid), 1)})
            proxy.terminate()
            proxy.wait(timeout=60)
            rows = ledger_rows(db)
        finally:
            for proc in (proxy, fake):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
    return report(minutes, rate, warmup_minutes, elapsed, samples, tally, rows)


def report(minutes: float, rate: float, warmup_minutes: float, elapsed: float,
           samples: list[dict[str, float]], tally: Tally, rows: dict[str, int]) -> dict[str, Any]:
    """The numbers the soak is about, as one JSON-able dict."""
    after = [(int(s["requests"]), s["rss_mb"]) for s in samples
             if s["t"] >= warmup_minutes * 60]
    total_rows = sum(rows.values())
    return {
        "when": time.strftime("%Y-%m-%d %H:%M"), "minutes": minutes, "rate": rate,
        "warmup_minutes": warmup_minutes, "elapsed_s": round(elapsed, 1),
        "requests": tally.requests, "achieved_rps": round(tally.requests / elapsed, 1),
        "skipped_ticks": tally.skipped, "sent_by_kind": dict(tally.sent),
        "statuses": dict(sorted(tally.statuses.items())),
        "expected_ledger_rows": tally.expected_rows, "ledger_rows": total_rows,
        "ledger_rows_by_source": rows, "lost_rows": tally.expected_rows - total_rows,
        "rss_start_mb": samples[0]["rss_mb"], "rss_after_warmup_mb": after[0][1] if after
        else None, "rss_end_mb": samples[-1]["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "slope_mb_per_100k": round(slope_per_100k(after), 2), "samples": samples,
    }


def markdown(res: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    lines = ["| minutes | rate req/s | requests | RSS start / after warm-up / end / max MB "
             "| slope after warm-up MB per 100k | ledger rows expected / written / lost |",
             "|---|---|---|---|---|---|",
             f"| {res['minutes']:g} | {res['achieved_rps']:g} | {res['requests']} | "
             f"{res['rss_start_mb']:.0f} / {res['rss_after_warmup_mb'] or float('nan'):.0f} / "
             f"{res['rss_end_mb']:.0f} / {res['rss_max_mb']:.0f} | "
             f"{res['slope_mb_per_100k']:+.2f} | {res['expected_ledger_rows']} / "
             f"{res['ledger_rows']} / {res['lost_rows']} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print and write the report; exit 1 if ledger rows were lost."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests started per second")
    parser.add_argument("--warmup-minutes", type=float, default=5.0,
                        help="RSS samples before this are left out of the slope")
    parser.add_argument("--rules", type=Path, default=ROOT / "rules" / "config.toml")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    res = run(args.minutes, args.rate, args.warmup_minutes, args.rules, args.sample_seconds,
              args.max_in_flight)
    table = markdown(res)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "soak.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out_dir / "soak.md").write_text(table)
    return 1 if res["lost_rows"] else 0


if __name__ == "__main__":
    sys.exit(main())
