"""Recommendations, routing metrics, the ledger's new columns, JSON request logs, CLI stats."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiosqlite
import orjson
import pytest

from proxy.__main__ import main
from proxy.accounting import prompt_hash
from proxy.store.ledger import Ledger
from proxy.testing import LiveProxy, admin_get, insert_entries, sample_entry
from tests.e2e.test_chat_e2e import WEATHER_TOOL

DAY = 1_740_823_200.0  # 2025-03-01T10:00:00Z
WINDOW = "from=2025-03-01&to=2025-03-01"
PIZZA_TOOL = {"type": "function", "function": {"name": "order_pizza", "description": "Order",
                                               "parameters": {"type": "object"}}}


def _kinds(body: dict) -> dict[str, dict]:
    return {r["kind"]: r for r in body["recommendations"]}


def test_repeated_prompts_are_priced_as_cache_savings(live: LiveProxy) -> None:
    h = prompt_hash([{"role": "user", "content": "What are your hours?"}])
    insert_entries(live, [sample_entry(ts=DAY + i, prompt_hash=h, cost_usd=0.01) for i in range(4)]
                   + [sample_entry(ts=DAY + 9, prompt_hash="other", cost_usd=0.5)])
    rec = _kinds(admin_get(live, f"/v1/proxy/recommendations?{WINDOW}")[1])[
        "cache_repeated_prompts"]
    assert rec["evidence"]["repeat_calls"] == 3
    assert rec["evidence"]["window_savings_usd"] == pytest.approx(0.03)
    assert rec["estimated_monthly_savings_usd"] == pytest.approx(0.03 * 30)  # one observed day


def test_strong_model_on_short_prompts_suggests_its_mini_sibling(live: LiveProxy) -> None:
    insert_entries(live, [sample_entry(ts=DAY + i, prompt_tokens=100, completion_tokens=50,
                                       cost_usd=0.00075) for i in range(4)])
    rec = _kinds(admin_get(live, f"/v1/proxy/recommendations?{WINDOW}")[1])[
        "route_short_prompts"]
    mini = (400 * 0.15 + 200 * 0.6) / 1e6
    assert rec["evidence"]["to_model"] == "gpt-4o-mini"
    assert rec["evidence"]["window_savings_usd"] == pytest.approx(0.003 - mini)


def test_tools_sent_but_never_called_are_reported(live: LiveProxy) -> None:
    sent = orjson.dumps({"get_weather": 40, "order_pizza": 30}).decode()
    insert_entries(live, [sample_entry(ts=DAY + i, prompt_tokens=500, tools_sent=sent,
                                       tools_called='["get_weather"]' if i == 0 else "[]")
                          for i in range(3)])
    rec = _kinds(admin_get(live, f"/v1/proxy/recommendations?{WINDOW}")[1])[
        "strip_unused_tools"]
    assert [t["tool"] for t in rec["evidence"]["tools"]] == ["order_pizza"]
    assert rec["evidence"]["tools"][0]["tokens"] == 90
    assert rec["estimated_monthly_savings_usd"] == pytest.approx(90 * 2.5 / 1e6 * 30)


def test_max_tokens_far_above_output_is_reported(live: LiveProxy) -> None:
    outputs = [100, 100, 100, 900]
    insert_entries(live, [sample_entry(ts=DAY + i, max_tokens=4000, completion_tokens=n,
                                       prompt_tokens=10) for i, n in enumerate(outputs)])
    rec = _kinds(admin_get(live, f"/v1/proxy/recommendations?{WINDOW}")[1])["lower_max_tokens"]
    assert rec["evidence"]["suggested_max_tokens"] == 640  # 2 x mean 300, rounded up to 64
    assert rec["evidence"]["tokens_over_cap"] == 260
    assert rec["evidence"]["window_savings_usd"] == pytest.approx(260 * 10 / 1e6)


def test_max_tokens_caps_are_computed_per_key_and_model(live: LiveProxy) -> None:
    groups = {("alice", "gpt-4o"): [100, 100, 100, 900], ("alice", "gpt-4.1"): [10, 10, 10],
              ("bob", "gpt-4o"): [500, 500, 700]}
    insert_entries(live, [sample_entry(ts=DAY + i, tenant=key, model=model, max_tokens=4000,
                                       completion_tokens=n)
                          for (key, model), outputs in groups.items()
                          for i, n in enumerate(outputs)])
    body = admin_get(live, f"/v1/proxy/recommendations?{WINDOW}")[1]
    got = {(r["evidence"]["key"], r["evidence"]["model"]):
           (r["evidence"]["suggested_max_tokens"], r["evidence"]["tokens_over_cap"])
           for r in body["recommendations"] if r["kind"] == "lower_max_tokens"}
    assert got == {("alice", "gpt-4o"): (640, 260), ("alice", "gpt-4.1"): (64, 0),
                   ("bob", "gpt-4o"): (1152, 0)}


def test_no_traffic_no_recommendations(live: LiveProxy) -> None:
    body = admin_get(live, "/v1/proxy/recommendations")[1]
    assert body["recommendations"] == [] and body["total_estimated_monthly_savings_usd"] == 0


def test_tenant_recommendations_use_only_its_rows(live: LiveProxy) -> None:
    h = prompt_hash([{"role": "user", "content": "same"}])
    insert_entries(live, [sample_entry(ts=DAY + i, prompt_hash=h, cost_usd=0.01, tenant="alice",
                                       namespace="alice") for i in range(3)])
    assert admin_get(live, f"/v1/proxy/recommendations?{WINDOW}", key="bob")[1][
        "recommendations"] == []


def _route(rule: str, confidence: float | None, src: str, dst: str) -> str:
    return orjson.dumps([{"stage": "route", "action": "route" if src != dst else "keep",
                          "why": "test", "rule": rule, "confidence": confidence,
                          "from_model": src, "to_model": dst}]).decode()


def test_routing_metrics_by_rule_confidence_and_outcome(live: LiveProxy) -> None:
    insert_entries(live, [
        sample_entry(ts=DAY, model="gpt-4o-mini", cost_usd=0.001, baseline_usd=0.01,
                     trace=_route("short", 0.93, "gpt-4o", "gpt-4o-mini")),
        sample_entry(ts=DAY + 1, model="gpt-4o-mini", cost_usd=0.002, baseline_usd=0.02,
                     trace=_route("short", 0.85, "gpt-4o", "gpt-4o-mini")),
        sample_entry(ts=DAY + 2, cost_usd=0.03, baseline_usd=0.03,
                     trace=_route("code", 0.4, "gpt-4o", "gpt-4o")),
        sample_entry(ts=DAY + 3, cost_usd=0.05, baseline_usd=0.05),  # no route decision
    ])
    body = admin_get(live, f"/v1/proxy/routing/metrics?{WINDOW}")[1]
    assert {k: (v["calls"], v["routed"]) for k, v in body["by_rule"].items()} == {
        "short": (2, 2), "code": (1, 0)}
    assert {k: v["calls"] for k, v in body["by_confidence"].items()} == {
        "0.9-1.0": 1, "0.8-0.9": 1, "0.4-0.5": 1}
    routed = body["by_outcome"]["routed"]
    assert (routed["cost_usd"], routed["baseline_usd"]) == pytest.approx((0.003, 0.03))
    assert routed["savings_usd"] == pytest.approx(0.027)
    assert body["model_pairs"]["gpt-4o -> gpt-4o-mini"]["calls"] == 2
    assert body["actions"] == {"route": 2, "keep": 1}


@pytest.mark.parametrize(("a", "b", "same"), [
    ("Hello  World", "hello world", True),
    ("hello world", "hello there", False),
])
def test_prompt_hash_normalizes_case_and_spaces(a: str, b: str, same: bool) -> None:
    first = prompt_hash([{"role": "system", "content": "x"}, {"role": "user", "content": a}])
    second = prompt_hash([{"role": "user", "content": [{"type": "text", "text": b}]}])
    assert (first == second) is same


def test_live_requests_fill_the_new_ledger_columns(live: LiveProxy) -> None:
    client = live.client()
    client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "get weather in Paris"}],
        tools=[WEATHER_TOOL, PIZZA_TOOL], max_tokens=300)
    list(client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "get weather in Rome"}],
        tools=[WEATHER_TOOL, PIZZA_TOOL], stream=True))
    plain, streamed = live.ledger_rows()
    for row in (plain, streamed):
        assert set(json.loads(row["tools_sent"])) == {"get_weather", "order_pizza"}
        assert json.loads(row["tools_called"]) == ["get_weather"]
        assert row["upstream_ms"] > 0 and row["prompt_hash"]
    assert plain["max_tokens"] == 300 and streamed["max_tokens"] is None


def test_old_ledger_tables_gain_the_new_columns(tmp_path: Path) -> None:
    async def go() -> list[str]:
        async with aiosqlite.connect(tmp_path / "old.db") as db:
            await db.execute("CREATE TABLE ledger (request_id TEXT, ts REAL, tenant TEXT, "
                             "namespace TEXT, requested_model TEXT, model TEXT, stage TEXT, "
                             "prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, "
                             "baseline_usd REAL, latency_ms REAL, status INTEGER, stream INTEGER, "
                             "source TEXT, trace TEXT, error TEXT)")
            await db.execute("INSERT INTO ledger (request_id, ts, tenant) VALUES ('old', 1, 'a')")
            ledger = Ledger(db)
            await ledger.start()
            ledger.record(sample_entry(request_id="new", prompt_hash="h"))
            await ledger.close()
            return [f"{r['request_id']}:{r['prompt_hash']}" for r in await ledger.rows()]

    assert asyncio.run(go()) == ["old:None", "new:h"]


def test_one_json_log_line_per_request_without_bodies(live: LiveProxy,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.requests")
    raw = live.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "my private words"}])
    live.ledger_rows()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.requests"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["id"], line["key"], line["stage"], line["model"], line["status"]) == (
        raw.headers["x-request-id"], "alice", "upstream", "gpt-4o", 200)
    assert line["prompt_tokens"] > 0 and line["cost_usd"] > 0 and line["latency_ms"] > 0
    assert line["cached_tokens"] == 0  # a first, short prompt: nothing cached upstream
    assert "my private words" not in caplog.text


def _cli_config(tmp_path: Path) -> Path:
    """A config.toml for the CLI, pointing at the ledger a LiveProxy in tmp_path wrote."""
    config = tmp_path / "c.toml"
    config.write_text(f'[[upstreams]]\nname = "f"\nbase_url = "http://127.0.0.1:9/v1"\n'
                      f'[storage]\nsqlite_path = "{tmp_path / "proxy.db"}"\n')
    return config


def test_cli_stats_prints_the_totals_table(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with LiveProxy(tmp_path) as live:
        insert_entries(live, [sample_entry(ts=DAY, prompt_tokens=2000, cached_tokens=1024,
                                           cost_usd=0.25, baseline_usd=1.0),
                              sample_entry(ts=DAY + 86_400, stage="exact_cache",
                                           baseline_usd=0.5)])
    config = _cli_config(tmp_path)
    assert main(["stats", "--config", str(config), "--from", "2025-03-01", "--to", "2025-03-02",
                 "--group-by", "day"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["2025-03-01"][1:9] == ["1", "2000", "1024", "0", "0.250000", "1.000000",
                                       "0.750000", "75.0"]
    assert rows["2025-03-02"][10] == "100.0%"  # the exact-cache hit rate that day
    assert rows["TOTAL"][1] == "2" and rows["TOTAL"][8] == "83.3"
    assert main(["stats", "--config", str(config), "--from", "2025-03-01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["cost_usd"] == 0.25


@pytest.mark.parametrize("flags", [["--to", "1e20"], ["--from", "nan"]])
def test_cli_stats_refuses_out_of_range_times(tmp_path: Path, flags: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with LiveProxy(tmp_path) as live:
        insert_entries(live, [sample_entry(ts=DAY)])
    assert main(["stats", "--config", str(_cli_config(tmp_path)), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "between 1970" in err and "Traceback" not in err


def test_cli_stats_reads_a_ledger_by_path_without_a_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    with LiveProxy(tmp_path) as live:
        insert_entries(live, [sample_entry(ts=DAY, cost_usd=0.25, baseline_usd=1.0)])
    monkeypatch.chdir(tmp_path)  # no config.toml here, as after `python -m proxy demo`
    assert main(["stats", "--db", str(tmp_path / "proxy.db"), "--from", "2025-03-01",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["cost_usd"] == 0.25
    assert main(["stats", "--db", str(tmp_path / "nope.db")]) == 1
    assert "no database there (--db)" in capsys.readouterr().err
