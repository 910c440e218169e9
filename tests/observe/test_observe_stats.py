"""`/v1/proxy/stats`: hand-computed totals, grouping, windows and tenant isolation."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from proxy.observe.report import render_stats
from proxy.observe.stats import STATS_COLUMNS, create_stats_index, stats
from proxy.observe.window import Window, WindowError, parse_time
from proxy.pricing import PriceTable
from proxy.store.ledger import Ledger
from proxy.store.sqlite import open_db
from proxy.testing import LiveProxy, admin_get, insert_entries, sample_entry

DAY1 = 1_740_823_200.0  # 2025-03-01T10:00:00Z
DAY2 = DAY1 + 86_400
WINDOW = "from=2025-03-01&to=2025-03-02"
SCRIPT = [
    sample_entry(ts=DAY1, prompt_tokens=1000, completion_tokens=500, cached_tokens=384,
                 cost_usd=0.0075, baseline_usd=0.0075, latency_ms=100),
    sample_entry(ts=DAY1 + 1, stage="pattern", baseline_usd=0.002, latency_ms=2),
    sample_entry(ts=DAY2, stage="exact_cache", baseline_usd=0.004, latency_ms=3),
    sample_entry(ts=DAY2 + 1, model="gpt-4o-mini", prompt_tokens=1000, completion_tokens=500,
                 cached_tokens=128, cost_usd=0.00045, baseline_usd=0.0075, latency_ms=200),
    sample_entry(ts=DAY2 + 2, tenant="bob", stage="semantic_cache", baseline_usd=0.01,
                 latency_ms=5),
    sample_entry(ts=DAY2 + 3, tenant="bob", stage="error", status=429, latency_ms=1),
    sample_entry(ts=DAY2 + 4, tenant="bob", status=500, latency_ms=50, error="boom"),
    sample_entry(ts=DAY1 - 86_400, cost_usd=9.0, baseline_usd=9.0),  # outside the window
]


@pytest.fixture
def scripted(live: LiveProxy) -> LiveProxy:
    insert_entries(live, SCRIPT)
    return live


def test_totals_equal_hand_computed_values(scripted: LiveProxy) -> None:
    status, body = admin_get(scripted, f"/v1/proxy/stats?{WINDOW}")
    assert status == 200
    t = body["totals"]
    assert (t["calls"], t["prompt_tokens"], t["completion_tokens"]) == (7, 2000, 1000)
    assert t["cached_tokens"] == 512
    assert t["cost_usd"] == pytest.approx(0.00795)
    assert t["baseline_usd"] == pytest.approx(0.031)
    assert t["savings_usd"] == pytest.approx(0.02305)
    assert t["savings_pct"] == pytest.approx(100 * 0.02305 / 0.031)
    assert {k: v["calls"] for k, v in t["hits"].items()} == {
        "pattern": 1, "exact_cache": 1, "semantic_cache": 1}
    assert t["hits"]["pattern"]["rate"] == pytest.approx(1 / 7)
    assert t["hit_rate"] == pytest.approx(3 / 7)
    assert (t["errors"], t["rate_limited"], t["routed_calls"]) == (2, 1, 1)
    assert t["latency_ms"] == {"p50": 5.0, "p95": 200.0}  # nearest rank over [2,3,5,100,200]


def test_models_share_and_stage_breakdown(scripted: LiveProxy) -> None:
    t = admin_get(scripted, f"/v1/proxy/stats?{WINDOW}")[1]["totals"]
    assert {m: v["share"] for m, v in t["models"].items()} == {"gpt-4o": 0.5, "gpt-4o-mini": 0.5}
    assert {k: v["calls"] for k, v in t["breakdown"].items()} == {
        "pattern": 1, "exact_cache": 1, "semantic_cache": 1, "cheap_model": 1,
        "strong_model": 1, "other": 2}
    assert t["breakdown"]["cheap_model"]["cost_usd"] == pytest.approx(0.00045)


@pytest.mark.parametrize(("group_by", "expected"), [
    ("day", {"2025-03-01": (2, 0.0075, 0.0095), "2025-03-02": (5, 0.00045, 0.0215)}),
    ("key", {"alice": (4, 0.00795, 0.021), "bob": (3, 0.0, 0.01)}),
    ("stage", {"upstream": (3, 0.00795, 0.015), "pattern": (1, 0.0, 0.002),
               "exact_cache": (1, 0.0, 0.004), "semantic_cache": (1, 0.0, 0.01),
               "error": (1, 0.0, 0.0)}),
    ("hour", {"2025-03-01T10:00Z": (2, 0.0075, 0.0095), "2025-03-02T10:00Z": (5, 0.00045, 0.0215)}),
])
def test_group_by(scripted: LiveProxy, group_by: str, expected: dict) -> None:
    body = admin_get(scripted, f"/v1/proxy/stats?{WINDOW}&group_by={group_by}")[1]
    got = {g["group"]: (g["calls"], g["cost_usd"], g["baseline_usd"]) for g in body["groups"]}
    assert got.keys() == expected.keys()
    for name, (calls, cost, baseline) in expected.items():
        assert got[name][0] == calls
        assert got[name][1:] == pytest.approx((cost, baseline))


@pytest.mark.parametrize("group_by", [None, "day", "hour", "key", "model", "stage"])
async def test_stats_read_the_ledger_only_through_the_covering_index(
        tmp_path: Path, group_by: str | None) -> None:
    with LiveProxy(tmp_path) as live:  # the server creates the index at startup
        insert_entries(live, SCRIPT)
    statements: list[str] = []
    async with aiosqlite.connect(tmp_path / "proxy.db") as db:
        await db.set_trace_callback(statements.append)
        result = await stats(db, Window.parse("2025-03-01", "2025-03-02"), PriceTable(),
                             group_by)
        await db.set_trace_callback(None)
        plans = [[row[3] for row in await db.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}")
                  if "ledger" in row[3]] for sql in statements]
    assert result["totals"]["calls"] == 7
    assert plans and all(plan for plan in plans)
    assert all("USING COVERING INDEX ledger_stats" in step for plan in plans for step in plan)


async def test_an_older_stats_index_is_replaced_by_one_covering_cached_tokens(
        tmp_path: Path) -> None:
    db = await open_db(str(tmp_path / "old.db"))
    try:
        ledger = Ledger(db)
        await ledger.start()
        await ledger.close()
        await db.execute("CREATE INDEX ledger_stats ON ledger (ts, tenant, stage, status, model,"
                         " requested_model, latency_ms, prompt_tokens, completion_tokens,"
                         " cost_usd, baseline_usd)")
        await create_stats_index(db)
        async with db.execute("PRAGMA index_info(ledger_stats)") as cur:
            columns = tuple(row[2] for row in await cur.fetchall())
    finally:
        await db.close()
    assert columns == STATS_COLUMNS and "cached_tokens" in columns


def test_terminal_table_shows_cached_tokens(scripted: LiveProxy) -> None:
    result = admin_get(scripted, f"/v1/proxy/stats?{WINDOW}")[1]
    header, _, total = render_stats(result).splitlines()[2:5]
    assert header.split()[2:5] == ["tok", "in", "cached"]
    assert total.split()[:5] == ["TOTAL", "7", "2000", "512", "1000"]


def test_tenant_key_sees_only_its_own_rows(scripted: LiveProxy) -> None:
    status, body = admin_get(scripted, f"/v1/proxy/stats?{WINDOW}&group_by=key", key="bob")
    assert status == 200
    assert body["key"] == "bob"
    assert [g["group"] for g in body["groups"]] == ["bob"]
    assert body["totals"]["calls"] == 3 and body["totals"]["cost_usd"] == 0.0


@pytest.mark.parametrize("path", ["/v1/proxy/stats", "/v1/proxy/routing/metrics",
                                  "/v1/proxy/recommendations"])
def test_tenant_asking_for_another_key_gets_403(scripted: LiveProxy, path: str) -> None:
    status, body = admin_get(scripted, f"{path}?{WINDOW}&key=alice", key="bob")
    assert status == 403
    assert body["error"]["code"] == "permission_denied"
    assert "0.00795" not in str(body)


def test_admin_can_narrow_to_one_key(scripted: LiveProxy) -> None:
    body = admin_get(scripted, f"/v1/proxy/stats?{WINDOW}&key=alice")[1]
    assert body["totals"]["calls"] == 4
    assert body["totals"]["baseline_usd"] == pytest.approx(0.021)


def test_window_in_unix_seconds_selects_the_same_rows(scripted: LiveProxy) -> None:
    body = admin_get(scripted, f"/v1/proxy/stats?from={DAY1 - 10:.0f}&to={DAY2 + 10:.0f}")[1]
    assert body["totals"]["calls"] == 7


@pytest.mark.parametrize(("query", "param"), [
    ("group_by=week", "group_by"), ("from=yesterday", "from"), ("from=2025-03-02&to=2025-03-01",
                                                              "from")])
def test_bad_parameters_get_400(live: LiveProxy, query: str, param: str) -> None:
    status, body = admin_get(live, f"/v1/proxy/stats?{query}")
    assert status == 400
    assert body["error"]["param"] == param


@pytest.mark.parametrize(("query", "param"), [
    ("to=1e20", "to"), ("from=-1e20", "from"), ("from=nan", "from"), ("to=inf", "to"),
    ("from=1969-12-31", "from"), ("from=0001-01-01T00:00:00%2B01:00", "from")])
def test_out_of_range_times_get_400_naming_the_param(live: LiveProxy, query: str,
                                                     param: str) -> None:
    status, body = admin_get(live, f"/v1/proxy/stats?{query}")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param


def test_stats_need_a_key(live: LiveProxy) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(live.base_url.removesuffix("/v1") + "/v1/proxy/stats")
    assert err.value.code == 401


def test_empty_window_has_zero_totals(live: LiveProxy) -> None:
    t = admin_get(live, "/v1/proxy/stats")[1]["totals"]
    assert (t["calls"], t["cost_usd"], t["hit_rate"], t["latency_ms"]["p50"]) == (0, 0.0, 0.0,
                                                                                  None)


def test_live_requests_add_up_to_their_billed_usage(live: LiveProxy) -> None:
    alice = live.client()
    usages = [alice.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"question {i}"}]).usage
        for i in range(2)]
    chunks = list(alice.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream it"}], stream=True,
        stream_options={"include_usage": True}))
    live.client("bob").chat.completions.create(model="gpt-4o",
                                               messages=[{"role": "user", "content": "bob"}])
    expected = sum(u.prompt_tokens * 2.5 + u.completion_tokens * 10 for u in usages) / 1e6
    expected += (chunks[-1].usage.prompt_tokens * 0.15 + chunks[-1].usage.completion_tokens * 0.6
                 ) / 1e6
    t = admin_get(live, "/v1/proxy/stats", key="alice")[1]["totals"]
    assert t["calls"] == 3 and t["upstream_calls"] == 3
    assert t["cost_usd"] == pytest.approx(expected)
    streamed = chunks[-1].usage.prompt_tokens
    assert t["prompt_tokens"] == sum(u.prompt_tokens for u in usages) + streamed
    assert t["models"]["gpt-4o"]["calls"] == 2 and t["models"]["gpt-4o-mini"]["calls"] == 1


@pytest.mark.parametrize(("text", "end_of_day", "expected"), [
    ("1740823200", False, 1_740_823_200.0),
    ("2025-03-01", False, 1_740_787_200.0),
    ("2025-03-01", True, 1_740_873_600.0),
    ("2025-03-01T10:00:00", False, 1_740_823_200.0),
    ("2025-03-01T11:00:00+01:00", False, 1_740_823_200.0),
    ("2025-03-01T10:00:00Z", False, 1_740_823_200.0),
])
def test_parse_time(text: str, end_of_day: bool, expected: float) -> None:
    assert parse_time(text, end_of_day=end_of_day) == expected


def test_window_defaults_to_the_last_30_days() -> None:
    window = Window.parse(None, None, now=1_000_000_000.0)
    assert window.end - window.start == pytest.approx(30 * 86_400, abs=2)


@pytest.mark.parametrize("text", ["1e20", "-1", "nan", "inf", "-inf", "1969-12-31",
                                  "1969-12-31T23:59:59Z", "9999-12-31T23:00:00-05:00"])
def test_parse_time_refuses_times_outside_1970_to_9999(text: str) -> None:
    with pytest.raises(WindowError, match="between 1970"):
        parse_time(text)


@pytest.mark.parametrize(("text", "end_of_day", "expected"), [
    ("0", False, 0.0),
    ("9999-12-31", False, 253_402_214_400.0),
    ("9999-12-31", True, 253_402_300_799.0),
])
def test_parse_time_accepts_the_edges_of_the_range(text: str, end_of_day: bool,
                                                   expected: float) -> None:
    assert parse_time(text, end_of_day=end_of_day) == expected


def test_window_refuses_garbage() -> None:
    with pytest.raises(WindowError):
        Window.parse("soon", None)
