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
import sys
import tempfile
import time
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


def start_proxy(tmp: Path, upstream: str, rules: str) -> tuple[object, str]:
    port = free_port()
    (tmp / "config.toml").write_text(
        f'[server]\nport = {port}\n[[upstreams]]\nname = "fake"\nbase_url = "{upstream}"\n'
        f'[keys.bench]\nsha256 = "{hash_key(KEY)}"\n'
        f'[storage]\nsqlite_path = "{tmp / "bench.db"}"\n')
    (tmp / "rules.toml").write_text(rules)
    proc = spawn([sys.executable, "-m", "proxy", "serve", "--config", str(tmp / "config.toml"),
                  "--rules", str(tmp / "rules.toml")])
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc, f"http://127.0.0.1:{port}/v1"


def start_litellm(tmp: Path, litellm: str, upstream: str) -> tuple[object, str]:
    port = free_port()
    models = "".join(
        f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n"
        f"      api_base: {upstream}\n      api_key: sk-fake\n" for m in ("gpt-4o",))
    (tmp / "litellm.yaml").write_text(f"model_list:\n{models}")
    proc = spawn([litellm, "--config", str(tmp / "litellm.yaml"), "--port", str(port),
                  "--num_workers", "1"], env={"LITELLM_MASTER_KEY": LITELLM_KEY})
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=240)
    return proc, f"http://127.0.0.1:{port}/v1"


def measure(base: str, key: str, requests: int, c32_requests: int) -> dict[str, dict[str, float]]:
    out = {}
    for stream in (False, True):
        one = chat_request(base, key, stream)
        c1 = asyncio.run(closed_loop(one, requests, 1))
        c32 = asyncio.run(closed_loop(one, c32_requests, 32))
        mode = "stream" if stream else "plain"
        out[mode] = {"c1_p50": c1.summary()["p50"], "c1_p99": c1.summary()["p99"],
                     "c32_rps": c32.rps, "c32_p50": c32.summary()["p50"],
                     "errors": c1.errors + c32.errors}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--litellm", default=None, help="path to the litellm CLI to compare")
    parser.add_argument("--requests", type=int, default=2000, help="requests at c=1")
    parser.add_argument("--c32-requests", type=int, default=4000)
    parser.add_argument("--rules", default="pipeline = []\n",
                        help="rule file text for the proxy (default: no stages)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.json"))
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        fport = free_port()
        fake = fake_upstream(fport)
        upstream = f"http://127.0.0.1:{fport}/v1"
        wait_http(upstream + "/models")
        procs = [fake]
        try:
            targets = {"direct": (fake, upstream)}
            targets["proxy"] = start_proxy(tmp, upstream, args.rules)
            procs.append(targets["proxy"][0])
            if args.litellm:
                targets["litellm"] = start_litellm(tmp, args.litellm, upstream)
                procs.append(targets["litellm"][0])
            for name, (proc, base) in targets.items():
                n = args.requests if name != "litellm" else max(200, args.requests // 5)
                m = args.c32_requests if name != "litellm" else max(500, args.c32_requests // 8)
                results[name] = measure(base, LITELLM_KEY if name == "litellm" else KEY, n, m)
                results[name]["rss_mb"] = peak_rss_mb(proc.pid)  # type: ignore[attr-defined]
                print(name, json.dumps(results[name]), flush=True)
        finally:
            for proc in procs:
                proc.terminate()  # type: ignore[attr-defined]
    report(results)
    Path(args.out).write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"),
                                          "results": results}, indent=2))


def report(results: dict[str, dict]) -> None:
    direct = results["direct"]
    print("\n| target | mode | c=1 p50 ms | c=1 p99 ms | added p50 | added p99 | c=32 req/s "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        for mode in ("plain", "stream"):
            r, d = res[mode], direct[mode]
            print(f"| {name} | {mode} | {r['c1_p50']:.2f} | {r['c1_p99']:.2f} | "
                  f"{r['c1_p50'] - d['c1_p50']:+.2f} | {r['c1_p99'] - d['c1_p99']:+.2f} | "
                  f"{r['c32_rps']:.0f} | {res['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
