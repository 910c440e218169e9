"""Added latency and throughput of the proxy vs the fake upstream directly and LiteLLM.

    python bench/overhead.py [--litellm PATH_TO_litellm] [--requests 2000]

All servers run as child processes on this machine (the load generator shares the
cores). Reports, per target: c=1 p50/p99 latency (non-stream: whole response;
stream: time to first byte), c=32 req/s, and the server's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import (
    ROOT,
    chat_request,
    closed_loop,
    fake_upstream,
    free_port,
    peak_rss_mb,
    spawn,
    wait_http,
)

from proxy.config import hash_key

KEY = "sk-bench"
LITELLM_KEY = "sk-" + secrets.token_hex(32)


def start_proxy(tmp: Path, upstream: str, rules: str,
                workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    """`proxy serve` with `rules` on a fresh port and database in `tmp`, once `/ready`."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.toml").write_text(
        f'[server]\nport = {port}\nworkers = {workers}\n'
        f'[[upstreams]]\nname = "fake"\nbase_url = "{upstream}"\n'
        f'[keys.bench]\nsha256 = "{hash_key(KEY)}"\n'
        f'[storage]\nsqlite_path = "{tmp / "bench.db"}"\n')
    (tmp / "rules.toml").write_text(rules)
    proc = spawn([sys.executable, "-m", "proxy", "serve", "--config", str(tmp / "config.toml"),
                  "--rules", str(tmp / "rules.toml")])
    wait_http(f"http://127.0.0.1:{port}/ready", timeout=600, proc=proc)  # models load first
    return proc, f"http://127.0.0.1:{port}/v1"


def start_litellm(tmp: Path, litellm: str,
                  upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    """LiteLLM's proxy (one worker, no database) in front of `upstream`."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    models = "".join(
        f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n"
        f"      api_base: {upstream}\n      api_key: sk-fake\n" for m in ("gpt-4o",))
    (tmp / "litellm.yaml").write_text(f"model_list:\n{models}")
    proc = spawn([litellm, "--config", str(tmp / "litellm.yaml"), "--port", str(port),
                  "--num_workers", "1"], env={"LITELLM_MASTER_KEY": LITELLM_KEY})
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=240, proc=proc)
    return proc, f"http://127.0.0.1:{port}/v1"


def measure(base: str, key: str, requests: dict[int, int],
            step: Callable[[str], None] = lambda done: None) -> dict[str, dict[str, float]]:
    """Closed-loop runs of `requests[c]` requests at each concurrency c, plain and
    streamed: p50/p99 ms (time to first byte for streams) and req/s per c. `step` is
    called after each run."""
    out = {}
    for stream in (False, True):
        one = chat_request(base, key, stream)
        mode = "stream" if stream else "plain"
        row: dict[str, float] = {"errors": 0}
        for concurrency, total in requests.items():
            result = asyncio.run(closed_loop(one, total, concurrency,
                                             warmup=min(100, total // 5)))
            summary = result.summary()
            row.update({f"c{concurrency}_p50": summary["p50"],
                        f"c{concurrency}_p99": summary["p99"],
                        f"c{concurrency}_rps": result.rps})
            row["errors"] += result.errors
            step(f"{mode} c={concurrency}")
        out[mode] = row
    return out


@dataclass(frozen=True)
class Target:
    """One server to measure: the fake upstream itself (`direct`), a proxy, or LiteLLM.
    `share` scales the request counts for slow targets."""

    kind: str
    rules: str = "pipeline = []\n"
    workers: int = 1
    litellm: str = ""
    share: float = 1.0


def run_targets(targets: dict[str, Target], requests: dict[int, int],
                step: Callable[[str], None] = lambda done: None) -> dict[str, dict]:
    """Start the fake upstream, then each target in turn (stopped before the next, so
    one idle model does not crowd the next run), and `measure` it; results per name."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        fport = free_port()
        fake = fake_upstream(fport)
        upstream = f"http://127.0.0.1:{fport}/v1"
        try:
            wait_http(upstream + "/models", proc=fake)
            for name, target in targets.items():
                tmp = Path(tmpdir) / name
                proc, base, key = fake, upstream, KEY
                if target.kind == "proxy":
                    proc, base = start_proxy(tmp, upstream, target.rules, target.workers)
                elif target.kind == "litellm":
                    proc, base = start_litellm(tmp, target.litellm, upstream)
                    key = LITELLM_KEY
                counts = {c: max(20, int(n * target.share)) for c, n in requests.items()}
                try:
                    results[name] = measure(base, key, counts,
                                            lambda done, name=name: step(f"{name} {done}"))
                    results[name]["rss_mb"] = peak_rss_mb(proc.pid)
                finally:
                    if proc is not fake:
                        stop(proc)
        finally:
            stop(fake)
    return results


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a child server and wait for it (and so for its workers)."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    """Measure the fake upstream, one proxy and optionally LiteLLM; print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--litellm", default=None, help="path to the litellm CLI to compare")
    parser.add_argument("--requests", type=int, default=2000, help="requests at c=1")
    parser.add_argument("--c32-requests", type=int, default=4000)
    parser.add_argument("--rules", default="pipeline = []\n",
                        help="rule file text for the proxy (default: no stages)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.json"))
    args = parser.parse_args()
    targets = {"direct": Target("direct"), "proxy": Target("proxy", rules=args.rules)}
    if args.litellm:
        targets["litellm"] = Target("litellm", litellm=args.litellm, share=0.2)
    results = run_targets(targets, {1: args.requests, 32: args.c32_requests},
                          lambda done: print(done, flush=True))
    print("\n" + table(results))
    Path(args.out).write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"),
                                          "results": results}, indent=2))


def table(results: dict[str, dict]) -> str:
    """The Markdown table of `measure` results per target; added latency is against
    the `direct` target of the same run."""
    direct = results["direct"]
    levels = sorted(int(k[1:-4]) for k in direct["plain"] if k.endswith("_rps"))
    lines = ["| target | mode | c=1 p50 ms | c=1 p99 ms | added p50 | added p99 | "
             + " | ".join(f"c={c} req/s" for c in levels if c > 1) + " | peak RSS MB |",
             "|---" * (7 + sum(1 for c in levels if c > 1)) + "|"]
    for name, res in results.items():
        for mode in ("plain", "stream"):
            r, d = res[mode], direct[mode]
            rates = " | ".join(f"{r[f'c{c}_rps']:,.0f}" for c in levels if c > 1)
            lines.append(f"| {name} | {mode} | {r['c1_p50']:.2f} | {r['c1_p99']:.2f} | "
                         f"{r['c1_p50'] - d['c1_p50']:+.2f} | {r['c1_p99'] - d['c1_p99']:+.2f} | "
                         f"{rates} | {res['rss_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
