"""`python -m bench --smoke`: the one bench command runs end to end and writes its
JSON and Markdown, so the bench cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_command_writes_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_LITELLM", "PROXY_WORKLOAD")}
    env["PROXY_SHARED_DATA"] = str(tmp_path / "absent")  # the repository's own data only
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "workload data is absent" in done.stderr
    assert "bench/data/workload_own.jsonl" in done.stderr

    report = json.loads((out / "bench.json").read_text())
    assert set(report["overhead"]) == {"direct", "bare"}
    for target in report["overhead"].values():
        assert target["rss_mb"] > 0
        for mode in ("plain", "stream"):
            assert target[mode]["errors"] == 0
            assert {f"c{c}_{k}" for c in (1, 32, 128) for k in ("p50", "p99", "rps")} \
                <= set(target[mode])
    for backend in ("sqlite", "redis"):
        assert report["cache"]["lookup"][backend]["p50_ms"] > 0
        for shape in ("json", "sse"):
            assert set(report["cache"][f"proxy_{backend}"][shape]) == {"hit", "miss"}
    (replay,) = report["savings"]["replays"]
    assert replay["events"] == 10
    assert report["savings"]["workload"].endswith("bench/data/workload_own.jsonl")
    assert report["litellm"].startswith("not installed")

    markdown = (out / "bench.md").read_text()
    assert markdown in done.stdout
    for heading in ("## Overhead", "## Exact cache", "## Savings"):
        assert heading in markdown
    assert "| bare | stream |" in markdown
    assert "LiteLLM: not installed" in markdown
