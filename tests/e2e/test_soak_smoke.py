"""bench/soak.py for a few seconds with tiny settings: the report has its shape and every
request that should leave a ledger row left one (so the bench cannot rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Stages that need no embedding model, so the proxy is ready at once.
RULES = ('pipeline = ["admission", "patterns", "exact_cache", "trim", "budget"]\n'
         '[exact_cache]\nshare = "all"\n')


def test_a_short_soak_reports_rss_and_loses_no_ledger_rows(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.1", "--rate", "15",
         "--warmup-minutes", "0", "--sample-seconds", "1", "--rules", str(rules),
         "--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["requests"] > 0 and report["lost_rows"] == 0
    assert report["ledger_rows"] == report["expected_ledger_rows"] > 0
    assert set(report["ledger_rows_by_source"]) >= {"chat", "responses", "thread", "passthrough"}
    refused = {"bad_key": "401", "invalid_body": "400"}
    assert all(status == refused.get(kind, "200")
               for kind, status in (k.split(":") for k in report["statuses"]))
    assert len(report["samples"]) >= 3 and all(s["rss_mb"] > 0 for s in report["samples"])
    assert isinstance(report["slope_mb_per_100k"], float)
    table = (tmp_path / "soak.md").read_text()
    assert table.startswith("| minutes |") and f"| {report['requests']} |" in table
