"""Spend statistics from the ledger, aggregated in sqlite.

One grouped query for sums, one for the models that answered, one for latency
percentiles (nearest rank, computed with window functions so no rows are loaded
into Python). The same function serves `/v1/proxy/stats`, the dashboard and
`python -m proxy stats`.

Conventions: hit rates are shares of all calls; latency percentiles cover
answered calls (status < 400); a model is "cheap" when its input price is below
CHEAP_INPUT_USD_PER_M; days and hours are UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiosqlite

from proxy.observe.window import Window
from proxy.pricing import PriceTable

GROUPS = {
    "day": "strftime('%Y-%m-%d', ts, 'unixepoch')",
    "hour": "strftime('%Y-%m-%dT%H:00Z', ts, 'unixepoch')",
    "key": "tenant",
    "model": "model",
    "stage": "stage",
}
CHEAP_INPUT_USD_PER_M = 1.0
_ALL = "'all'"

_SUMS = """
SELECT {g} AS grp, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd),
       SUM(baseline_usd), SUM(stage = 'pattern'), SUM(stage = 'exact_cache'),
       SUM(stage = 'semantic_cache'), SUM(status >= 400), SUM(status = 429),
       SUM(stage = 'upstream' AND status < 400 AND model != requested_model)
FROM ledger WHERE {where} GROUP BY grp ORDER BY grp
"""
_MODELS = """
SELECT {g} AS grp, model, COUNT(*), SUM(cost_usd), SUM(baseline_usd)
FROM ledger WHERE {where} AND stage = 'upstream' AND status < 400 GROUP BY grp, model
"""
_LATENCY = """
SELECT grp, MAX(CASE WHEN rn = (n * 50 + 99) / 100 THEN latency_ms END),
       MAX(CASE WHEN rn = (n * 95 + 99) / 100 THEN latency_ms END)
FROM (SELECT {g} AS grp, latency_ms,
             ROW_NUMBER() OVER (PARTITION BY {g} ORDER BY latency_ms) AS rn,
             COUNT(*) OVER (PARTITION BY {g}) AS n
      FROM ledger WHERE {where} AND status < 400)
WHERE rn = (n * 50 + 99) / 100 OR rn = (n * 95 + 99) / 100
GROUP BY grp
"""


async def fetch(db: aiosqlite.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
    """All rows of a query."""
    async with db.execute(sql, list(args)) as cur:
        return list(await cur.fetchall())


def savings(cost: float, baseline: float) -> dict[str, float]:
    """Absolute and relative savings against the baseline."""
    saved = baseline - cost
    return {"savings_usd": saved, "savings_pct": 100.0 * ratio(saved, baseline)}


def ratio(part: float, whole: float) -> float:
    """part / whole, 0 when whole is 0."""
    return part / whole if whole else 0.0


def is_cheap(prices: PriceTable, model: str) -> bool:
    """True for models priced below CHEAP_INPUT_USD_PER_M per 1M input tokens."""
    return prices.price(model).input < CHEAP_INPUT_USD_PER_M


def _metrics(row: Sequence[Any], models: dict[str, list[Any]],
             latency: tuple[float | None, float | None], prices: PriceTable) -> dict[str, Any]:
    (_, calls, prompt, completion, cost, baseline, pattern, exact, semantic, errors,
     limited, routed) = row
    hits = {"pattern": pattern, "exact_cache": exact, "semantic_cache": semantic}
    answered = sum(m[0] for m in models.values())
    breakdown = {stage: {"calls": n, "cost_usd": 0.0} for stage, n in hits.items()}
    breakdown["cheap_model"] = {"calls": 0, "cost_usd": 0.0}
    breakdown["strong_model"] = {"calls": 0, "cost_usd": 0.0}
    for model, (n, model_cost, _) in models.items():
        slot = breakdown["cheap_model" if is_cheap(prices, model) else "strong_model"]
        slot["calls"] += n
        slot["cost_usd"] += model_cost
    breakdown["other"] = {"calls": calls - sum(hits.values()) - answered, "cost_usd": 0.0}
    return {
        "calls": calls,
        "prompt_tokens": prompt or 0,
        "completion_tokens": completion or 0,
        "cost_usd": cost or 0.0,
        "baseline_usd": baseline or 0.0,
        **savings(cost or 0.0, baseline or 0.0),
        "hits": {stage: {"calls": n, "rate": ratio(n, calls)} for stage, n in hits.items()},
        "hit_rate": ratio(sum(hits.values()), calls),
        "upstream_calls": answered,
        "routed_calls": routed,
        "models": {model: {"calls": n, "share": ratio(n, answered), "cost_usd": c,
                           "baseline_usd": b}
                   for model, (n, c, b) in sorted(models.items())},
        "breakdown": breakdown,
        "errors": errors,
        "rate_limited": limited,
        "latency_ms": {"p50": latency[0], "p95": latency[1]},
    }


async def _grouped(db: aiosqlite.Connection, window: Window, group: str,
                   prices: PriceTable) -> list[tuple[str, dict[str, Any]]]:
    where, args = window.where()
    sums = await fetch(db, _SUMS.format(g=group, where=where), args)
    models: dict[Any, dict[str, list[Any]]] = {}
    for grp, model, n, cost, baseline in await fetch(
            db, _MODELS.format(g=group, where=where), args):
        models.setdefault(grp, {})[model] = [n, cost, baseline]
    latency = {grp: (p50, p95) for grp, p50, p95 in
               await fetch(db, _LATENCY.format(g=group, where=where), args)}
    return [(str(row[0]), _metrics(row, models.get(row[0], {}),
                                   latency.get(row[0], (None, None)), prices))
            for row in sums]


def empty_metrics() -> dict[str, Any]:
    """The metrics of a window without calls."""
    return _metrics(("all", 0, 0, 0, 0.0, 0.0, 0, 0, 0, 0, 0, 0), {}, (None, None),
                    PriceTable())


async def stats(db: aiosqlite.Connection, window: Window, prices: PriceTable,
                group_by: str | None = None) -> dict[str, Any]:
    """Totals for the window and, with `group_by` (a GROUPS key), one entry per group."""
    totals = await _grouped(db, window, _ALL, prices)
    result: dict[str, Any] = {**window.to_dict(), "group_by": group_by,
                              "totals": totals[0][1] if totals else empty_metrics()}
    if group_by is not None:
        result["groups"] = [{"group": name, **metrics}
                            for name, metrics in await _grouped(db, window, GROUPS[group_by],
                                                                prices)]
    return result
