"""Start-up with the shipped rules: time to ready and memory, without and with fitted models.

    python bench/startup.py [--json bench/results/startup.json]

Each start runs in a fresh process: an in-process proxy (proxy.testing.LiveProxy, fake
upstream) with rules/config.toml, timed from the process's first import until nothing is
still loading (what /ready waits for). The first start gets an empty fit cache (it fits the
context classifier and the pair verifier, as a first start after install without
`build-embedder` does); the second the cache the first one filled. The embedding engine is
whatever `auto` picks here (onnx once `python -m proxy build-embedder` ran).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, os, sys, time
started = time.perf_counter()
import tempfile
from pathlib import Path
from proxy.testing import LiveProxy
from proxy.pipeline.semantic.standalone import EMBEDDER

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

rules = (Path(sys.argv[1]) / "rules" / "config.toml").read_text()
with tempfile.TemporaryDirectory() as tmp, LiveProxy(Path(tmp), rules=rules) as live:
    live.wait_ready()
    ready = time.perf_counter() - started
    embedder = live.resources.kept.get(EMBEDDER)
    print(json.dumps({"ready_seconds": round(ready, 2), "rss_mb": round(rss_mb()),
                      "engine": embedder.variant if embedder else None,
                      "sklearn_imported": "sklearn" in sys.modules,
                      "torch_imported": "torch" in sys.modules}))
"""


def start(fit_cache: str) -> dict[str, Any]:
    """One start in a fresh process with `fit_cache` as PROXY_FIT_CACHE."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], check=True, text=True,
                         capture_output=True, timeout=1800, cwd=ROOT,
                         env={**os.environ, "PROXY_FIT_CACHE": fit_cache,
                              "HF_HUB_OFFLINE": "1"})
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Start twice (cold, then warm fit cache) and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        figures = {"cold_fit_cache": start(cache), "warm_fit_cache": start(cache)}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
