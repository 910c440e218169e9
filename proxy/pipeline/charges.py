"""Proxy-internal upstream calls (trim's summaries, the semantic judge) billed to the key they
serve, and recorded in the ledger so that savings are reported net of them.

A summary is made before the budget stage runs, so without this it would spend
money no reservation covers and no key pays for. `KeyCharges.complete_for(ctx)`
gives a drop-in for `UpstreamClient.complete` that first holds the call's
estimate (prompt + max_completion_tokens, priced for its model) against the
requesting key's tpm and budget in the limit store the budget stage uses, refuses
with RateLimited / QuotaExceeded when it does not fit (the caller does without:
trim drops the older turns instead), and afterwards settles the hold to the call's
usage, or releases it when the call failed. Keys without a policy call as before.
`internal_call_entry` is the ledger row of such a call.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.alerts import AlertSender
from proxy.config import KeyConfig
from proxy.errors import QuotaExceeded, RateLimited
from proxy.pipeline.core import Context, Usage
from proxy.pipeline.stages.budget import Budget
from proxy.pipeline.stages.budget import Rules as BudgetRules
from proxy.pricing import PriceTable
from proxy.resources import Resources
from proxy.store.ledger import LedgerEntry
from proxy.store.limits import LimitStore, to_nanos, to_usd
from proxy.upstream.client import UpstreamClient

Complete = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
DEFAULTS = BudgetRules()  # completion estimate and longest hold, as the budget stage's


def charges_of(resources: Resources) -> KeyCharges:
    """Billed internal calls over the shared limit store, prices and alerts."""
    return KeyCharges(resources.upstream, resources.limits, resources.prices,
                      resources.config.server.timezone, resources.alerts,
                      resources.config.alerts_daily_usd)


def internal_call_entry(ctx: Context, prices: PriceTable, model: str, usage: Usage | None,
                        started: float, stage: str, source: str, trace: str) -> LedgerEntry:
    """The ledger row of an internal call made for `ctx`'s request (`started`: its
    perf_counter start); it costs money and saves none."""
    usage = usage or Usage()
    return LedgerEntry(
        request_id=ctx.request_id, ts=time.time(), tenant=ctx.tenant.name,
        namespace=ctx.tenant.namespace, requested_model=model, model=model, stage=stage,
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens, cost_usd=prices.usage_cost(model, usage),
        baseline_usd=0.0, latency_ms=(time.perf_counter() - started) * 1000.0, status=200,
        stream=False, source=source, trace=trace)


class KeyCharges:
    """Reserves, settles or releases internal upstream calls against a key's tpm and budget."""

    def __init__(self, upstream: UpstreamClient, limits: LimitStore, prices: PriceTable,
                 timezone: str, alerts: AlertSender | None,
                 daily_usd: tuple[float, ...]) -> None:
        self.upstream, self.prices = upstream, prices
        # the budget stage's own holds (with its default estimate and longest hold)
        self.holds = Budget(DEFAULTS, limits, prices, timezone, alerts, daily_usd)

    def complete_for(self, ctx: Context) -> Complete:
        """`upstream.complete`, billed to the key of the request `ctx`."""
        key = ctx.tenant.policy
        if key is None:
            return self.upstream.complete

        async def complete(body: dict[str, Any]) -> dict[str, Any]:
            return await self._charged(key, body)

        return complete

    async def _charged(self, key: KeyConfig, body: dict[str, Any]) -> dict[str, Any]:
        model = str(body["model"])
        ask = await self.holds.ask_for(key, body, model)
        token = secrets.token_hex(8)
        verdict = await self.holds.limits.reserve(key.name, token, ask)
        if not verdict.allowed:
            refused = QuotaExceeded if verdict.reason == "budget" else RateLimited
            raise refused(f"key '{key.name}' has no room for it: {verdict.reason} limit reached;"
                          f" it may use {ask.tokens} tokens, ${to_usd(ask.cost):.6f}")
        usage = None
        try:
            result = await self.upstream.complete(body)
            usage = Usage.from_openai(result.get("usage"))
            return result
        finally:
            used, cost = ((usage.total_tokens, to_nanos(self.prices.usage_cost(model, usage)))
                          if usage is not None else (0, 0))
            await self.holds.settle(key, token, ask, used, cost, f"an internal {model} call")
