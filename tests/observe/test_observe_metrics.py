"""`/metrics`: Prometheus exposition fed by the ledger, budgets hook, multiprocess mode,
admin-only access and bounded labels."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import hash_key
from proxy.observe.metrics import ModelLabels
from proxy.pricing import PriceTable
from proxy.testing import ADMIN_KEY, KEYS, LiveProxy, admin_get, insert_entries, sample_entry

USER = [{"role": "user", "content": "count me"}]


def metrics_text(base_url: str, key: str | None = ADMIN_KEY) -> str:
    """The /metrics page, fetched the way a Prometheus scrape with a bearer token does."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(base_url.removesuffix("/v1") + "/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.read().decode()


def scrape(base_url: str, key: str | None = ADMIN_KEY) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics_text(base_url, key))
            for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(v for (n, lbls), v in samples.items()
               if n == name and set(labels.items()) <= set(lbls))


def test_metrics_parse_for_the_admin_key(live: LiveProxy) -> None:
    samples = scrape(live.base_url)
    assert total(samples, "proxy_requests_total") == 0


@pytest.mark.parametrize(("key", "status", "code"), [
    (None, 401, "invalid_api_key"), ("sk-wrong", 401, "invalid_api_key"),
    ("alice", 403, "permission_denied")])
def test_metrics_refuse_callers_without_the_admin_key(live: LiveProxy, key: str | None,
                                                      status: int, code: str) -> None:
    headers = {"Authorization": f"Bearer {KEYS.get(key, key)}"} if key else {}
    request = urllib.request.Request(live.base_url.removesuffix("/v1") + "/metrics",
                                     headers=headers)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    body = orjson.loads(err.value.read())
    assert err.value.code == status
    assert body["error"]["code"] == code and "proxy_budget" not in str(body)


def test_metrics_public_switch_serves_them_without_a_key(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, config={"admin": {"metrics_public": True}}) as live:
        live.client().chat.completions.create(model="gpt-4o", messages=USER)
        samples = scrape(live.base_url, key=None)
    assert total(samples, "proxy_requests_total", model="gpt-4o") == 1


def test_client_invented_model_names_share_one_label(live: LiveProxy) -> None:
    invented = [secrets.token_hex(100) for _ in range(20)]
    invented += ["gpt-4o-" + secrets.token_hex(100) for _ in range(20)]  # priced by prefix
    client = live.client()
    for model in ["gpt-4o", *invented]:
        client.chat.completions.create(model=model, messages=USER)
    insert_entries(live, [sample_entry(model=secrets.token_hex(2048), status=404,
                                       stage="error") for _ in range(10)])
    text = metrics_text(live.base_url)
    samples = scrape(live.base_url)
    assert {dict(labels)["model"] for _, labels in samples if "model" in dict(labels)} == {
        "gpt-4o", "other"}
    assert total(samples, "proxy_requests_total", model="other") == 50
    assert [body["model"] for body in live.fake.received] == ["gpt-4o", *invented]
    assert len(text) < 20_000


@pytest.mark.parametrize(("model", "label"), [
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18"),
    ("openai/gpt-4.1", "openai/gpt-4.1"),
    ("house-llama", "house-llama"),  # priced in config.toml
    ("llama-3-70b", "other"),
    ("gpt-4o-" + "x" * 60, "other"),
    ("", "other"),
])
def test_model_label_is_the_name_only_for_priced_models(model: str, label: str) -> None:
    labels = ModelLabels(PriceTable({"house-llama": (0.1, 0.2)}))
    assert labels(model) == label


def test_model_labels_stop_naming_new_models_at_the_limit() -> None:
    labels = ModelLabels(PriceTable(), limit=2)
    assert [labels(m) for m in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4o")] == [
        "gpt-4o", "gpt-4o-mini", "other", "gpt-4o"]


def test_request_counters_move_after_requests(live: LiveProxy) -> None:
    before = scrape(live.base_url)
    client = live.client()
    client.chat.completions.create(model="gpt-4o", messages=USER)
    list(client.chat.completions.create(model="gpt-4o", messages=USER, stream=True))
    after = scrape(live.base_url)
    assert total(after, "proxy_requests_total", stage="upstream", model="gpt-4o",
                 status="200") - total(before, "proxy_requests_total") == 2
    cost = sum(r["cost_usd"] for r in live.ledger_rows())
    assert total(after, "proxy_cost_usd_total", key="alice") == pytest.approx(cost)
    assert total(after, "proxy_upstream_latency_seconds_count", model="gpt-4o") == 2
    assert total(after, "proxy_overhead_seconds_count") == 2


def test_cache_hits_rate_limits_and_tokens_saved_come_from_ledger_rows(live: LiveProxy) -> None:
    trace = orjson.dumps([{"stage": "tools", "action": "strip", "why": "x",
                           "tokens_saved": 120}]).decode()
    insert_entries(live, [
        sample_entry(stage="exact_cache", baseline_usd=0.01),
        sample_entry(stage="semantic_cache", baseline_usd=0.02),
        sample_entry(stage="error", status=429, tenant="bob"),
        sample_entry(cost_usd=0.5, baseline_usd=0.75, trace=trace, upstream_ms=20.0,
                     latency_ms=25.0),
    ])
    samples = scrape(live.base_url)
    assert total(samples, "proxy_cache_hits_total", stage="exact_cache") == 1
    assert total(samples, "proxy_cache_hits_total", stage="semantic_cache") == 1
    assert total(samples, "proxy_rate_limited_total", key="bob") == 1
    assert total(samples, "proxy_tokens_saved_total", stage="tools") == 120
    assert total(samples, "proxy_baseline_cost_usd_total", key="alice") == pytest.approx(0.78)
    # 25 - 20 ms around the upstream call, plus the two free answers' whole 1 ms each
    assert total(samples, "proxy_overhead_seconds_sum") == pytest.approx(0.007)


def test_cached_tokens_are_counted_per_model(live: LiveProxy) -> None:
    insert_entries(live, [
        sample_entry(prompt_tokens=2000, completion_tokens=10, cached_tokens=1152),
        sample_entry(prompt_tokens=1500, completion_tokens=10, cached_tokens=1024),
        sample_entry(model="gpt-4o-mini", prompt_tokens=900, completion_tokens=10),
    ])
    samples = scrape(live.base_url)
    assert total(samples, "proxy_cached_tokens_total", model="gpt-4o") == 2176
    assert total(samples, "proxy_cached_tokens_total", model="gpt-4o-mini") == 0
    assert total(samples, "proxy_tokens_total", direction="prompt", model="gpt-4o") == 3500


BUDGET_ONLY = 'pipeline = ["budget"]'
BUDGETED = {"keys": {"alice": {"budget_usd": 10.0}, "bob": {"budget_usd": 5.0}}}


def spend(live: LiveProxy) -> float:
    """Alice asks once; what upstream billed her (the ledger row's cost)."""
    live.client().chat.completions.create(model="gpt-4o",
                                          messages=[{"role": "user", "content": "plan my day"}])
    [row] = live.ledger_rows()
    assert row["cost_usd"] > 0
    return float(row["cost_usd"])


def test_budget_remaining_metric_is_what_each_key_has_left(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=BUDGET_ONLY, config=BUDGETED) as live:
        cost = spend(live)
        samples = scrape(live.base_url)
    assert samples[("proxy_budget_remaining_usd", (("key", "alice"),))] == pytest.approx(
        10.0 - cost)
    assert samples[("proxy_budget_remaining_usd", (("key", "bob"),))] == 5.0


def test_budgets_endpoint_shows_a_tenant_only_its_own(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=BUDGET_ONLY, config=BUDGETED) as live:
        cost = spend(live)
        status, body = admin_get(live, "/v1/proxy/budgets", key="alice")
        admin = admin_get(live, "/v1/proxy/budgets")[1]
    assert status == 200
    assert body["budgets"] == [{"key": "alice", "budget_usd": 10.0, "period": "month",
                                "soft_budget_usd": None,
                                "remaining_usd": pytest.approx(10.0 - cost)}]
    assert [(b["key"], b["remaining_usd"]) for b in admin["budgets"]] == [
        ("alice", pytest.approx(10.0 - cost)), ("bob", 5.0)]


def test_metrics_carry_no_request_ids(live: LiveProxy) -> None:
    raw = live.client().chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)
    text = metrics_text(live.base_url)
    assert raw.headers["x-request-id"] not in text and "count me" not in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_workers_share_metrics_through_multiprocess_dir(tmp_path: Path) -> None:
    (tmp_path / "fake").mkdir()
    with LiveProxy(tmp_path / "fake") as upstream_only:
        port = _free_port()
        config = tmp_path / "config.toml"
        config.write_text(f"""
[server]
port = {port}
workers = 2
rules = "{tmp_path / 'rules.toml'}"
[[upstreams]]
name = "fake"
base_url = "{upstream_only.fake_url}"
[storage]
sqlite_path = "{tmp_path / 'proxy.db'}"
[keys.alice]
sha256 = "{hash_key(KEYS['alice'])}"
[admin]
metrics_public = true
""")
        (tmp_path / "rules.toml").write_text("pipeline = []\n")
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env["TMPDIR"] = str(tmp_path)
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(config)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}/v1"
            _wait_ready(base)
            client = openai.OpenAI(base_url=base, api_key=KEYS["alice"], max_retries=0)
            for _ in range(6):
                client.chat.completions.create(model="gpt-4o", messages=USER)
            metrics_dirs = list(tmp_path.glob("proxy-metrics-*"))
            assert len(metrics_dirs) == 1 and list(metrics_dirs[0].glob("*.db"))
            deadline = time.monotonic() + 10
            while (total(scrape(base, key=None), "proxy_requests_total") < 6
                   and time.monotonic() < deadline):
                time.sleep(0.2)
            assert total(scrape(base, key=None), "proxy_requests_total", status="200") == 6
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    assert not list(tmp_path.glob("proxy-metrics-*"))


def _wait_ready(base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(base.removesuffix("/v1") + "/health", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
