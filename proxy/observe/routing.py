"""Routing decisions from the ledger's traces: by rule, by confidence, routed vs baseline.

The route stage records `ctx.decide("route", action, why, rule=..., confidence=...,
from_model=..., to_model=...)`; a request counts as routed when `to_model` differs
from `from_model`. sqlite's json_each walks the traces; only grouped rows leave it.
"""

from __future__ import annotations

from typing import Any

import aiosqlite

from proxy.observe.stats import fetch, savings
from proxy.observe.window import Window
from proxy.pricing import PriceTable

_DECISIONS = """
SELECT json_extract(d.value, '$.rule') AS rule,
       json_extract(d.value, '$.action') AS action,
       CASE WHEN json_extract(d.value, '$.confidence') IS NULL THEN NULL
            ELSE MIN(MAX(CAST(json_extract(d.value, '$.confidence') * 10 AS INTEGER), 0), 9)
       END AS bucket,
       json_extract(d.value, '$.from_model') AS from_model,
       json_extract(d.value, '$.to_model') AS to_model,
       COUNT(*), SUM(l.cost_usd), SUM(l.baseline_usd)
FROM (SELECT trace, cost_usd, baseline_usd FROM ledger
      WHERE {where} AND trace LIKE '%"stage":"route"%') AS l,
     json_each(CASE WHEN json_valid(l.trace) THEN l.trace ELSE '[]' END) AS d
WHERE json_extract(d.value, '$.stage') = 'route' AND json_extract(d.value, '$.action') != 'shadow'
GROUP BY rule, action, bucket, from_model, to_model
"""


_SHADOW = """
SELECT json_extract(d.value, '$.stage') AS stage,
       json_extract(d.value, '$.rule') AS rule,
       json_extract(d.value, '$.mode') AS mode,
       json_extract(d.value, '$.would_model') AS would_model,
       COUNT(*), SUM(l.cost_usd), SUM(l.prompt_tokens), SUM(l.completion_tokens)
FROM (SELECT trace, cost_usd, prompt_tokens, completion_tokens FROM ledger
      WHERE {where} AND trace LIKE '%"action":"shadow"%') AS l,
     json_each(CASE WHEN json_valid(l.trace) THEN l.trace ELSE '[]' END) AS d
WHERE json_extract(d.value, '$.action') = 'shadow'
GROUP BY stage, rule, mode, would_model
"""


async def shadow_metrics(db: aiosqlite.Connection, window: Window,
                         prices: PriceTable) -> dict[str, dict[str, Any]]:
    """What rules in shadow (or the shadow side of a split) would have done, per rule:
    how often they held, the cost of those requests as they went, and what they would
    have cost had the rule acted (a pattern answer costs nothing; a route is priced at
    the model it would have chosen, same tokens)."""
    where, args = window.where()
    table: dict[str, dict[str, Any]] = {}
    for stage, rule, mode, would_model, calls, cost, prompt, completion in await fetch(
            db, _SHADOW.format(where=where), args):
        would_cost = prices.cost(would_model, prompt or 0, completion or 0) \
            if would_model else 0.0
        slot = table.setdefault(f"{stage}:{rule}", {
            "stage": stage, "rule": rule, "mode": mode, "would_have_held": 0,
            "cost_usd": 0.0, "would_cost_usd": 0.0, "would_models": {}})
        slot["would_have_held"] += calls
        slot["cost_usd"] += cost or 0.0
        slot["would_cost_usd"] += would_cost
        if would_model:
            slot["would_models"][would_model] = slot["would_models"].get(would_model, 0) + calls
    return {key: {**slot, "would_save_usd": slot["cost_usd"] - slot["would_cost_usd"]}
            for key, slot in sorted(table.items())}


def bucket_label(bucket: int | None) -> str:
    """'0.8-0.9' for bucket 8; 'none' when the decision had no confidence."""
    if bucket is None:
        return "none"
    return f"{bucket / 10:.1f}-{(bucket + 1) / 10:.1f}"


def _add(table: dict[str, dict[str, Any]], key: str, calls: int, cost: float,
         baseline: float, routed: bool) -> None:
    slot = table.setdefault(key, {"calls": 0, "routed": 0, "cost_usd": 0.0,
                                  "baseline_usd": 0.0})
    slot["calls"] += calls
    slot["routed"] += calls if routed else 0
    slot["cost_usd"] += cost
    slot["baseline_usd"] += baseline


def _finish(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {key: {**slot, **savings(slot["cost_usd"], slot["baseline_usd"])}
            for key, slot in sorted(table.items())}


async def routing_metrics(db: aiosqlite.Connection, window: Window,
                          prices: PriceTable) -> dict[str, Any]:
    """Route decisions by rule, by confidence bucket and by model pair, with their cost,
    and what shadow rules would have done (`shadow`)."""
    where, args = window.where()
    by_rule: dict[str, dict[str, Any]] = {}
    by_confidence: dict[str, dict[str, Any]] = {}
    by_outcome: dict[str, dict[str, Any]] = {}
    pairs: dict[str, dict[str, Any]] = {}
    actions: dict[str, int] = {}
    for rule, action, bucket, src, dst, calls, cost, baseline in await fetch(
            db, _DECISIONS.format(where=where), args):
        routed = dst is not None and dst != src
        for table, key in ((by_rule, str(rule or "(no rule)")),
                           (by_confidence, bucket_label(bucket)),
                           (by_outcome, "routed" if routed else "kept")):
            _add(table, key, calls, cost or 0.0, baseline or 0.0, routed)
        if routed:
            _add(pairs, f"{src} -> {dst}", calls, cost or 0.0, baseline or 0.0, True)
        actions[str(action)] = actions.get(str(action), 0) + calls
    return {**window.to_dict(), "by_rule": _finish(by_rule),
            "by_confidence": _finish(by_confidence), "by_outcome": _finish(by_outcome),
            "model_pairs": _finish(pairs), "actions": actions,
            "shadow": await shadow_metrics(db, window, prices)}
