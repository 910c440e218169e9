"""Turn a finished request into a ledger row: tokens, cost, and baseline cost.

Cost is what was billed upstream, priced for the model actually used, with the
prompt tokens the upstream read from its prompt cache at the cached-input rate.
The baseline is what the request *as the client sent it* would have cost: the
requested model, the untrimmed prompt (stages that shrink the prompt record
`ctx.baseline_prompt_tokens`), and the completion the answer had (for free
answers, the usage they saved). A request for an alias such as `auto` is priced
at `ctx.baseline_model`, the dearest model the alias can route to.

The baseline's cached tokens: a request the proxy forwarded with the client's
prompt and model is the baseline request itself, so it has the cached tokens
upstream reported. One the proxy shrank (tools, trim), routed to another model or
answered for free is priced as if the client's previous turn were in the upstream's
cache (`prompt_cache.py`), and never with fewer cached tokens than the proxy's own
request got: the client's best case, so savings are a floor, never overstated by
assuming the client's cache cold.

It also notes what the recommendations need: a hash of the last user message
(repeated prompts), `max_tokens`, the tools forwarded with their token sizes and
the tools the answer called, and the time spent on the upstream.

Pass-through requests (`passthrough_entry`) are billed what their answer's usage says,
priced where it was read (`proxy.pipeline.passthrough.usage`). A batch line the proxy
answered itself (`batch_line_entry`) costs nothing and saved its answer at the batch price.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from proxy import tokens
from proxy.pipeline.core import Bill, Context, Reply, Usage
from proxy.pipeline.prompt_cache import warm_cached_tokens
from proxy.pricing import PriceTable
from proxy.store.ledger import LedgerEntry

NORMALIZED_HASH_CHARS = 65_536  # longer messages are hashed as sent (normalizing costs ~25 ms/MB)


def prompt_hash(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """sha256 of the last user message, case- and whitespace-normalized (None if none)."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            text = tokens.content_text(message.get("content"))
            if len(text) <= NORMALIZED_HASH_CHARS:
                text = " ".join(text.lower().split())
            return hashlib.sha256(text.encode()).hexdigest()
    return None


def trace_json(ctx: Context) -> str:
    """The trace as JSON; never raises (values orjson cannot write fall back to the
    standard encoder, unknown types to their string)."""
    decisions = [d.to_dict() for d in ctx.trace]
    try:
        return orjson.dumps(decisions).decode()
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits
        return json.dumps(decisions, default=str)


@functools.lru_cache(maxsize=1024)
def _definition_tokens(definition: bytes) -> int:
    return tokens.count_text(definition.decode())


def _tool_name(tool: Any) -> str:
    if not isinstance(tool, Mapping):
        return "?"
    fn = tool.get("function")
    name = fn.get("name") if isinstance(fn, Mapping) else tool.get("name")
    return str(name or tool.get("type") or "?")


def tools_sent(body: Mapping[str, Any]) -> str | None:
    """JSON {tool name: tokens of its definition} for the tools forwarded (None if none)."""
    tools = body.get("tools") or body.get("functions")
    if not isinstance(tools, list) or not tools:
        return None
    return orjson.dumps({_tool_name(t): _definition_tokens(orjson.dumps(t))
                         for t in tools}).decode()


def tools_called(answer: Mapping[str, Any] | None) -> str | None:
    """JSON list of the tool names a chat.completion called (None without an answer)."""
    if not answer:
        return None
    names: set[str] = set()
    for choice in answer.get("choices") or []:
        message = choice.get("message") or {}
        for call in message.get("tool_calls") or []:
            names.add(_tool_name(call))
        if message.get("function_call"):
            names.add(str(message["function_call"].get("name")))
    return orjson.dumps(sorted(names)).decode()


def baseline_usage(ctx: Context, reply: Reply | None) -> Usage:
    """Tokens the request would have used without the proxy (cached ones included)."""
    if reply is not None and reply.saved_usage is not None:
        saved = reply.saved_usage
        return Usage(saved.prompt_tokens, saved.completion_tokens,
                     min(warm_cached_tokens(ctx.client_body), saved.prompt_tokens))
    billed = reply.usage if reply is not None else None
    prompt = ctx.baseline_prompt_tokens
    if prompt is None and billed is not None and reply is not None \
            and (reply.model or ctx.model) == ctx.requested_model:
        return Usage(billed.prompt_tokens, billed.completion_tokens, billed.cached_tokens)
    if prompt is None:
        prompt = billed.prompt_tokens if billed else tokens.count_request(ctx.body)
    cached = max(billed.cached_tokens if billed else 0, warm_cached_tokens(ctx.client_body))
    return Usage(prompt, billed.completion_tokens if billed else 0, min(cached, prompt))


def _entry(ctx: Context, reply: Reply | None, *, model: str, billed: Usage | None,
           cost: float, baseline: float, status: int, error: str | None,
           **extra: Any) -> LedgerEntry:
    """The fields every ledger row has, from the request, its reply and what it cost."""
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
        cached_tokens=billed.cached_tokens if billed else 0,
        cost_usd=cost,
        baseline_usd=max(baseline, cost),
        latency_ms=(time.perf_counter() - ctx.started) * 1000.0,
        status=status,
        stream=ctx.stream,
        source=ctx.source,
        trace=trace_json(ctx),
        error=error or (reply.error if reply is not None else None),
        upstream_ms=ctx.upstream_ms,
        **extra,
    )


def ledger_entry(
    ctx: Context, reply: Reply | None, prices: PriceTable, *, status: int,
    error: str | None = None, answer: Mapping[str, Any] | None = None,
) -> LedgerEntry:
    """The ledger row for a finished request (`answer`: the chat.completion, if captured)."""
    billed = reply.usage if reply is not None and reply.stage == "upstream" else None
    model = (reply.model if reply is not None and reply.model else ctx.model)
    cost = prices.usage_cost(model, billed) if billed else 0.0
    base = baseline_usage(ctx, reply) if status < 400 else Usage()
    baseline = prices.usage_cost(ctx.baseline_model or ctx.requested_model, base)
    sent = tools_sent(ctx.body)
    return _entry(ctx, reply, model=model, billed=billed, cost=cost, baseline=baseline,
                  status=status, error=error, prompt_hash=prompt_hash(ctx.messages),
                  max_tokens=_max_tokens(ctx.body), tools_sent=sent,
                  tools_called=tools_called(answer) if sent else None)


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return value if isinstance(value, int) and 0 < value < 2**63 else None


def passthrough_entry(ctx: Context, reply: Reply | None, prices: PriceTable, bill: Bill | None,
                      *, status: int, error: str | None = None) -> LedgerEntry:
    """The ledger row of a pass-through request: billed what its answer's usage says (none:
    nothing), its baseline that cost, or for a cache hit what the stored answer cost."""
    saved = reply.saved_usage if reply is not None else None
    model = bill.model if bill else (reply.model if reply is not None and reply.model
                                     else ctx.model)
    cost = bill.cost_usd if bill else 0.0
    baseline = (prices.cost(model, saved.prompt_tokens, saved.completion_tokens)
                if saved is not None else cost)
    return _entry(ctx, reply, model=model, billed=bill.usage if bill else None, cost=cost,
                  baseline=baseline, status=status, error=error)


def batch_line_entry(ctx: Context, reply: Reply, prices: PriceTable) -> LedgerEntry:
    """The ledger row of a batch line a free stage answered: nothing billed, the baseline
    what the line would have cost in the upstream batch (the batch price)."""
    base = baseline_usage(ctx, reply)
    baseline = prices.batch_cost(ctx.baseline_model or ctx.requested_model,
                                 base.prompt_tokens, base.completion_tokens)
    return _entry(ctx, reply, model=reply.model or ctx.model, billed=None, cost=0.0,
                  baseline=baseline, status=reply.status, error=None,
                  prompt_hash=prompt_hash(ctx.messages), max_tokens=_max_tokens(ctx.body))
