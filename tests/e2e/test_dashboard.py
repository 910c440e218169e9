"""`/dashboard` in a real headless Chromium: it renders the ledger's totals and charts.

Chromium must be installed (`apt-get install -y chromium`; .ci/run does it). The
page takes the key from the URL fragment; `--virtual-time-budget` lets its fetches
finish before the DOM is dumped. The screenshot goes to the test's temporary directory.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from proxy.testing import LiveProxy, admin_get, insert_entries, sample_entry

DAY = 86_400.0


class Elements(HTMLParser):
    """Attributes of every element, and the first text of elements with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: dict[str, str] = {}
        self._open_id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        self._open_id = values.get("id")

    def handle_data(self, data: str) -> None:
        if self._open_id and data.strip():
            self.text.setdefault(self._open_id, data.strip())
            self._open_id = None

    def by_id(self, element_id: str) -> dict[str, str]:
        return next(a for _, a in self.tags if a.get("id") == element_id)

    def with_class(self, cls: str) -> list[dict[str, str]]:
        return [a for _, a in self.tags if cls in a.get("class", "").split()]


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Run headless Chromium on `url`; its stdout."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium chromium-driver "
                    "(.ci/run installs it)")
    result = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=15000", *args, url],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def replay(live: LiveProxy) -> None:
    """A few days of traffic: free answers, cheap and strong models, a 429, real requests."""
    now = time.time()
    rows = []
    for day in range(1, 6):
        ts = now - day * DAY
        rows += [
            sample_entry(ts=ts, stage="pattern", baseline_usd=0.002, latency_ms=1),
            sample_entry(ts=ts + 1, stage="exact_cache", baseline_usd=0.004, latency_ms=2),
            sample_entry(ts=ts + 2, stage="semantic_cache", baseline_usd=0.004, latency_ms=30),
            sample_entry(ts=ts + 3, model="gpt-4o-mini", prompt_tokens=900, completion_tokens=300,
                         cost_usd=0.0003, baseline_usd=0.005, latency_ms=400),
            sample_entry(ts=ts + 4, tenant="bob", prompt_tokens=1500, completion_tokens=300,
                         cached_tokens=1024, cost_usd=0.0054, baseline_usd=0.0054,
                         latency_ms=900),
            sample_entry(ts=ts + 5, tenant="bob", stage="error", status=429, latency_ms=1),
        ]
    insert_entries(live, rows)
    for i in range(3):
        live.client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"live question {i}"}])


@pytest.fixture
def dashboard(tmp_path: Path) -> tuple[LiveProxy, str]:
    with LiveProxy(tmp_path, config={"keys": {"alice": {"budget_usd": 10.0},
                                              "bob": {"budget_usd": 2.0}}}) as live:
        replay(live)
        page = live.base_url.removesuffix("/v1") + "/dashboard"
        yield live, page


def _api_totals(live: LiveProxy, key: str = "admin") -> dict:
    since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)).date().isoformat()
    return admin_get(live, f"/v1/proxy/stats?from={since}", key=key)[1]["totals"]


def test_dashboard_renders_totals_and_charts(dashboard: tuple[LiveProxy, str],
                                            tmp_path: Path) -> None:
    live, page = dashboard
    dom = Elements()
    dom.feed(chromium(tmp_path, f"{page}#key={live.key('admin')}", "--dump-dom"))
    totals = _api_totals(live)
    assert "hidden" not in dom.by_id("dash")["class"]
    body = next(a for t, a in dom.tags if t == "body")
    assert body["data-state"] == "ready"
    assert totals["calls"] == 33
    for kpi, field in [("kpi-cost", "cost_usd"), ("kpi-baseline", "baseline_usd"),
                       ("kpi-savings", "savings_usd"), ("kpi-calls", "calls")]:
        assert float(dom.by_id(kpi)["data-value"]) == pytest.approx(totals[field])
    assert dom.text["kpi-calls"] == "33"
    assert totals["cached_tokens"] == 5 * 1024
    assert float(dom.by_id("kpi-tokens")["data-value"]) == totals["cached_tokens"]
    assert "(5,120 cached)" in dom.text["kpi-tokens"]
    assert dom.text["kpi-baseline"] == f"${totals['baseline_usd']:.4f}"
    cost_bars = dom.with_class("bar-cost")
    assert len(cost_bars) >= 30  # one per day of the 30-day window
    assert sum(float(b["data-value"]) for b in cost_bars) == pytest.approx(totals["cost_usd"])
    assert sum(float(b["data-value"]) for b in dom.with_class("bar-baseline")) == pytest.approx(
        totals["baseline_usd"])
    segments = {s["data-stage"]: int(s["data-calls"]) for s in dom.with_class("seg")}
    assert segments == {"pattern": 5, "exact_cache": 5, "semantic_cache": 5, "cheap_model": 5,
                        "strong_model": 8, "other": 5}


def test_tenant_key_dashboard_shows_only_its_numbers(dashboard: tuple[LiveProxy, str],
                                                     tmp_path: Path) -> None:
    live, page = dashboard
    dom = Elements()
    dom.feed(chromium(tmp_path, f"{page}#key={live.key('bob')}", "--dump-dom"))
    bob = _api_totals(live, key="bob")
    assert float(dom.by_id("kpi-cost")["data-value"]) == pytest.approx(bob["cost_usd"])
    assert dom.text["kpi-calls"] == "10"


def test_dashboard_without_a_key_asks_for_one(dashboard: tuple[LiveProxy, str],
                                              tmp_path: Path) -> None:
    _, page = dashboard
    dom = Elements()
    dom.feed(chromium(tmp_path, page, "--dump-dom"))
    assert next(a for t, a in dom.tags if t == "body")["data-state"] == "need-key"
    assert "hidden" not in dom.by_id("login")["class"]


def test_dashboard_screenshot(dashboard: tuple[LiveProxy, str], tmp_path: Path) -> None:
    """The page renders to a real picture (written to the test's tmp dir; set
    PROXY_DASHBOARD_SCREENSHOT=PATH to keep a copy, e.g. bench/results/dashboard.png)."""
    live, page = dashboard
    screenshot = tmp_path / "dashboard.png"
    chromium(tmp_path, f"{page}#key={live.key('admin')}", "--window-size=1400,1000",
             f"--screenshot={screenshot}")
    assert screenshot.stat().st_size > 20_000
    keep = os.environ.get("PROXY_DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, keep)
