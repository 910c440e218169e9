"""Savings opportunities found in the ledger, each with an estimated monthly saving.

- repeated prompts answered upstream (same normalized last user message, same
  namespace and model): every repeat after the first could be a cache hit;
- strong (expensive) models answering short, simple prompts (no tools, short
  question and answer): priced again on the model's cheaper sibling;
- tool definitions forwarded with every request but never called: their tokens;
- `max_tokens` far above what answers use: OpenAI bills only generated tokens, so
  the saving is the output beyond a tighter cap (2x the mean answer, rounded up to
  64); the main gain is smaller budget reservations.

Window savings are scaled to 30 days over the span the window's rows cover
(at least one day), so a few hours of traffic are not extrapolated wildly.
"""

from __future__ import annotations

from typing import Any

import aiosqlite

from proxy.observe.stats import fetch, is_cheap
from proxy.observe.window import DAY, Window
from proxy.pricing import PriceTable

SHORT_PROMPT_TOKENS = 200
SHORT_ANSWER_TOKENS = 300
MAX_TOKENS_RATIO = 4.0
MIN_CALLS = 3
FALLBACK_CHEAP_MODEL = "gpt-4o-mini"
_ANSWERED = "stage = 'upstream' AND status < 400"

_SPAN = "SELECT MIN(ts), MAX(ts) FROM ledger WHERE {where}"
_REPEATS = f"""
SELECT namespace, requested_model, prompt_hash, COUNT(*) AS n, SUM(cost_usd) AS cost
FROM ledger WHERE {{where}} AND {_ANSWERED} AND prompt_hash IS NOT NULL
GROUP BY namespace, requested_model, prompt_hash HAVING n >= 2
ORDER BY cost * (n - 1) / n DESC
"""
_SHORT = f"""
SELECT model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd)
FROM ledger WHERE {{where}} AND {_ANSWERED} AND tools_sent IS NULL
  AND prompt_tokens <= {SHORT_PROMPT_TOKENS} AND completion_tokens <= {SHORT_ANSWER_TOKENS}
GROUP BY model
"""
_UNUSED_TOOLS = f"""
SELECT t.key AS tool, l.model, COUNT(*), SUM(t.value),
       SUM(EXISTS(SELECT 1 FROM json_each(l.tools_called) AS c WHERE c.value = t.key))
FROM (SELECT model, tools_sent, tools_called FROM ledger
      WHERE {{where}} AND {_ANSWERED} AND tools_sent IS NOT NULL
        AND tools_called IS NOT NULL) AS l,
     json_each(l.tools_sent) AS t
GROUP BY tool, l.model
"""
_MAX_TOKENS = f"""
SELECT tenant, model, COUNT(*) AS n, AVG(max_tokens) AS avg_max,
       AVG(completion_tokens) AS avg_out, MAX(completion_tokens), MAX(cap),
       SUM(MAX(completion_tokens - cap, 0))
FROM (SELECT tenant, model, max_tokens, completion_tokens,
             MAX(64, ((CAST(2 * AVG(completion_tokens) OVER (PARTITION BY tenant, model)
                            AS INTEGER) + 63) / 64) * 64) AS cap
      FROM ledger WHERE {{where}} AND {_ANSWERED} AND max_tokens IS NOT NULL)
GROUP BY tenant, model
HAVING n >= {MIN_CALLS} AND avg_max >= {MAX_TOKENS_RATIO} * MAX(avg_out, 1)
"""


def cheaper_model(prices: PriceTable, model: str) -> str:
    """The model's `-mini` sibling when it is priced at most half, else FALLBACK_CHEAP_MODEL."""
    sibling = f"{model}-mini"
    price = prices.price(model).input
    candidate = prices.price(sibling)
    return sibling if candidate.known and candidate.input <= price / 2 else FALLBACK_CHEAP_MODEL


def _item(kind: str, title: str, detail: str, monthly: float,
          evidence: Any) -> dict[str, Any]:
    return {"kind": kind, "title": title, "detail": detail,
            "estimated_monthly_savings_usd": round(monthly, 6), "evidence": evidence}


async def _repeated_prompts(db: aiosqlite.Connection, where: tuple[str, list[object]],
                            scale: float) -> list[dict[str, Any]]:
    groups = await fetch(db, _REPEATS.format(where=where[0]), where[1])
    if not groups:
        return []
    saved = sum(cost * (n - 1) / n for *_, n, cost in groups)
    repeats = sum(n - 1 for *_, n, _ in groups)
    top = [{"namespace": ns, "model": model, "prompt_hash": h[:16], "calls": n,
            "cost_usd": cost} for ns, model, h, n, cost in groups[:5]]
    return [_item("cache_repeated_prompts", "Cache repeated prompts",
                  f"{repeats} calls repeated an earlier prompt (same last user message, "
                  f"namespace and model) and were paid for again upstream; enable exact_cache "
                  "(or lengthen its TTL) to answer them for free.",
                  saved * scale, {"distinct_prompts": len(groups), "repeat_calls": repeats,
                                  "window_savings_usd": saved, "top": top})]


async def _strong_on_short(db: aiosqlite.Connection, where: tuple[str, list[object]],
                           prices: PriceTable, scale: float) -> list[dict[str, Any]]:
    found = []
    for model, n, prompt, completion, cost in await fetch(
            db, _SHORT.format(where=where[0]), where[1]):
        target = cheaper_model(prices, model)
        if is_cheap(prices, model) or n < MIN_CALLS or target == model:
            continue
        saved = cost - prices.cost(target, prompt, completion)
        if saved <= 0:
            continue
        found.append(_item(
            "route_short_prompts", f"Route short prompts from {model} to {target}",
            f"{n} calls to {model} had at most {SHORT_PROMPT_TOKENS} prompt and "
            f"{SHORT_ANSWER_TOKENS} answer tokens and no tools; a route rule sending such "
            f"prompts to {target} would cost {prices.cost(target, prompt, completion):.6f} "
            f"instead of {cost:.6f} USD.",
            saved * scale, {"model": model, "to_model": target, "calls": n,
                            "prompt_tokens": prompt, "completion_tokens": completion,
                            "window_savings_usd": saved}))
    return found


async def _unused_tools(db: aiosqlite.Connection, where: tuple[str, list[object]],
                        prices: PriceTable, scale: float) -> list[dict[str, Any]]:
    tools: dict[str, dict[str, Any]] = {}
    for tool, model, sent, tokens, called in await fetch(
            db, _UNUSED_TOOLS.format(where=where[0]), where[1]):
        slot = tools.setdefault(tool, {"tool": tool, "sent": 0, "called": 0, "tokens": 0,
                                       "window_savings_usd": 0.0})
        slot["sent"] += sent
        slot["called"] += called
        slot["tokens"] += tokens
        slot["window_savings_usd"] += prices.cost(model, tokens, 0)
    unused = [t for t in tools.values() if t["called"] == 0 and t["sent"] >= MIN_CALLS]
    if not unused:
        return []
    saved = sum(t["window_savings_usd"] for t in unused)
    names = ", ".join(sorted(t["tool"] for t in unused))
    return [_item("strip_unused_tools", "Stop sending tool definitions that are never called",
                  f"These tools were sent with requests but never called: {names}. The tools "
                  "stage can strip them when the conversation does not need them.",
                  saved * scale, {"tools": sorted(unused, key=lambda t: -t["tokens"])})]


async def _max_tokens(db: aiosqlite.Connection, where: tuple[str, list[object]],
                      prices: PriceTable, scale: float) -> list[dict[str, Any]]:
    found = []
    for tenant, model, n, avg_max, avg_out, max_out, cap, over in await fetch(
            db, _MAX_TOKENS.format(where=where[0]), where[1]):
        saved = prices.cost(model, 0, over)
        found.append(_item(
            "lower_max_tokens", f"Lower max_tokens for {tenant} on {model}",
            f"{n} calls asked for max_tokens {avg_max:.0f} on average but answers used "
            f"{avg_out:.0f} (longest {max_out}); max_tokens={cap} would cap runaway answers "
            "and shrink budget reservations (only generated tokens are billed).",
            saved * scale, {"key": tenant, "model": model, "calls": n, "avg_max_tokens": avg_max,
                            "avg_completion_tokens": avg_out, "suggested_max_tokens": cap,
                            "tokens_over_cap": over, "window_savings_usd": saved}))
    return found


async def recommendations(db: aiosqlite.Connection, window: Window,
                          prices: PriceTable) -> dict[str, Any]:
    """Every opportunity in the window, largest estimated monthly saving first."""
    where = window.where()
    first, last = (await fetch(db, _SPAN.format(where=where[0]), where[1]))[0]
    span_days = max((last - first) / DAY, 1.0) if first is not None else 1.0
    scale = 30.0 / span_days
    items = [*await _repeated_prompts(db, where, scale),
             *await _strong_on_short(db, where, prices, scale),
             *await _unused_tools(db, where, prices, scale),
             *await _max_tokens(db, where, prices, scale)]
    items.sort(key=lambda item: -item["estimated_monthly_savings_usd"])
    return {**window.to_dict(), "observed_days": span_days, "recommendations": items,
            "total_estimated_monthly_savings_usd": round(
                sum(i["estimated_monthly_savings_usd"] for i in items), 6)}
