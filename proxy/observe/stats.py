"""Spend statistics from the ledger, aggregated in sqlite.

One scan sums the rows by (group, model); the totals and each model's share add up
those sums in Python. Latency percentiles (nearest rank) come from window functions
(one query for the totals, one for the groups), so no rows are loaded into Python.
Every query reads only the columns of STATS_INDEX, a covering index the server
creates at startup: a month-wide window is then an index range scan instead of one
table lookup per row. The same function serves `/v1/proxy/stats`, the dashboard and
`python -m proxy stats`.

Conventions: hit rates are shares of all calls; latency percentiles cover
answered calls (status < 400); a model is "cheap" when its input price is below
CHEAP_INPUT_USD_PER_M; days and hours are UTC.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite

from proxy.observe.window import DAY, Window
from proxy.pricing import PriceTable


def _utc_bucket(seconds: float, fmt: str) -> Callable[[Any], str]:
    return lambda bucket: time.strftime(fmt, time.gmtime(bucket * seconds))


# group_by -> (SQL of the group, its name in the answer); days and hours are integer
# buckets of unix seconds (cheaper to group than strftime), named in Python.
GROUPS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "day": ("CAST(ts / 86400 AS INTEGER)", _utc_bucket(DAY, "%Y-%m-%d")),
    "hour": ("CAST(ts / 3600 AS INTEGER)", _utc_bucket(3600, "%Y-%m-%dT%H:00Z")),
    "key": ("tenant", str),
    "model": ("model", str),
    "stage": ("stage", str),
}
CHEAP_INPUT_USD_PER_M = 1.0
STATS_COLUMNS = ("ts", "tenant", "stage", "status", "model", "requested_model", "latency_ms",
                 "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
                 "baseline_usd")
STATS_INDEX = (f"CREATE INDEX IF NOT EXISTS ledger_stats ON ledger "
               f"({', '.join(STATS_COLUMNS)})")
_ALL = "'all'"

_SUMS = """
SELECT {g} AS grp, model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens),
       TOTAL(cached_tokens), SUM(cost_usd), SUM(baseline_usd), SUM(stage = 'pattern'),
       SUM(stage = 'exact_cache'), SUM(stage = 'semantic_cache'), SUM(status >= 400),
       SUM(status = 429),
       SUM(stage = 'upstream' AND status < 400 AND model != requested_model),
       SUM(stage = 'upstream' AND status < 400),
       SUM(cost_usd * (stage = 'upstream' AND status < 400)),
       SUM(baseline_usd * (stage = 'upstream' AND status < 400))
FROM ledger WHERE {where} GROUP BY grp, model ORDER BY grp
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


async def create_stats_index(db: aiosqlite.Connection) -> None:
    """Create STATS_INDEX, replacing one an older version made with other columns."""
    async with db.execute("PRAGMA index_info(ledger_stats)") as cur:
        present = tuple(row[2] for row in await cur.fetchall())
    if present and present != STATS_COLUMNS:
        await db.execute("DROP INDEX ledger_stats")
    await db.execute(STATS_INDEX)


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


class Tally:
    """Running sums of one group's ledger rows, and of its answered calls per model."""

    def __init__(self) -> None:
        # calls, prompt, completion, cached, cost, baseline, pattern, exact, semantic,
        # errors, rate limited, routed: the columns of _SUMS after grp and model
        self.sums: list[Any] = [0] * 12
        self.models: dict[str, list[Any]] = {}  # model -> [answered calls, cost, baseline]

    def add(self, model: str, sums: Sequence[Any], answered: Sequence[Any]) -> None:
        """Add one (group, model) row of _SUMS: its sums and its answered calls' sums."""
        self.sums = [total + value for total, value in zip(self.sums, sums, strict=True)]
        if answered[0]:
            mine = self.models.get(model, [0, 0.0, 0.0])
            self.models[model] = [total + value for total, value in zip(mine, answered)]


def _metrics(tally: Tally, latency: tuple[float | None, float | None],
             prices: PriceTable) -> dict[str, Any]:
    (calls, prompt, completion, cached, cost, baseline, pattern, exact, semantic, errors,
     limited, routed) = tally.sums
    models = tally.models
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
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": int(cached),
        "cost_usd": float(cost),
        "baseline_usd": float(baseline),
        **savings(float(cost), float(baseline)),
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


async def _latency(db: aiosqlite.Connection, group: str, where: str,
                   args: Sequence[Any]) -> dict[Any, tuple[float | None, float | None]]:
    return {grp: (p50, p95) for grp, p50, p95 in
            await fetch(db, _LATENCY.format(g=group, where=where), args)}


async def stats(db: aiosqlite.Connection, window: Window, prices: PriceTable,
                group_by: str | None = None) -> dict[str, Any]:
    """Totals for the window and, with `group_by` (a GROUPS key), one entry per group.

    One scan sums by (group, model); the totals add up the groups' sums.
    """
    where, args = window.where()
    group, name = GROUPS[group_by] if group_by is not None else (_ALL, str)
    totals = Tally()
    groups: dict[Any, Tally] = {}
    for grp, model, *sums, answered, answered_cost, answered_baseline in await fetch(
            db, _SUMS.format(g=group, where=where), args):
        for tally in (totals, groups.setdefault(grp, Tally())):
            tally.add(model, sums, (answered, answered_cost, answered_baseline))
    latency = await _latency(db, _ALL, where, args)
    result: dict[str, Any] = {**window.to_dict(), "group_by": group_by,
                              "totals": _metrics(totals, latency.get("all", (None, None)),
                                                 prices)}
    if group_by is not None:
        latency = await _latency(db, group, where, args)
        result["groups"] = [{"group": name(grp), **_metrics(tally, latency.get(grp, (None, None)),
                                                            prices)}
                            for grp, tally in groups.items()]
    return result
