"""Turn a finished request into a ledger row: tokens, cost, and baseline cost.

Cost is what was billed upstream, priced for the model actually used. The
baseline is what the request *as the client sent it* would have cost: the
requested model, the untrimmed prompt (stages that shrink the prompt record
`ctx.baseline_prompt_tokens`), and the completion the answer had (for free
answers, the usage they saved).
"""

from __future__ import annotations

import time

import orjson

from proxy import tokens
from proxy.pipeline.core import Context, Reply, Usage
from proxy.pricing import PriceTable
from proxy.store.ledger import LedgerEntry


def baseline_usage(ctx: Context, reply: Reply | None) -> Usage:
    """Tokens the request would have used without the proxy."""
    if reply is not None and reply.saved_usage is not None:
        return reply.saved_usage
    billed = reply.usage if reply is not None else None
    prompt = ctx.baseline_prompt_tokens
    if prompt is None:
        prompt = billed.prompt_tokens if billed else tokens.count_request(ctx.body)
    return Usage(prompt, billed.completion_tokens if billed else 0)


def ledger_entry(
    ctx: Context, reply: Reply | None, prices: PriceTable, *, status: int,
    error: str | None = None,
) -> LedgerEntry:
    """The ledger row for a finished request."""
    billed = reply.usage if reply is not None and reply.stage == "upstream" else None
    model = (reply.model if reply is not None and reply.model else ctx.model)
    cost = prices.cost(model, billed.prompt_tokens, billed.completion_tokens) if billed else 0.0
    base = baseline_usage(ctx, reply) if status < 400 else Usage()
    baseline = prices.cost(ctx.requested_model, base.prompt_tokens, base.completion_tokens)
    return LedgerEntry(
        request_id=ctx.request_id,
        ts=time.time(),
        tenant=ctx.tenant.name,
        namespace=ctx.tenant.namespace,
        requested_model=ctx.requested_model,
        model=model,
        stage=reply.stage if reply is not None else "error",
        prompt_tokens=billed.prompt_tokens if billed else 0,
        completion_tokens=billed.completion_tokens if billed else 0,
        cost_usd=cost,
        baseline_usd=max(baseline, cost),
        latency_ms=(time.perf_counter() - ctx.started) * 1000.0,
        status=status,
        stream=ctx.stream,
        source=ctx.source,
        trace=orjson.dumps([d.to_dict() for d in ctx.trace]).decode(),
        error=error or (reply.error if reply is not None else None),
    )
