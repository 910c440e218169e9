"""`POST /v1/proxy/explain`: the decision trace for a chat request, without calling upstream.

A dry run stores, reserves and calls nothing, but it counts towards the key's rpm
and concurrency like any request (it costs CPU), and big bodies are tokenized off
the event loop.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy import tokens
from proxy.api.body import read_body
from proxy.api.chat import build_context
from proxy.pipeline.registry import PIPELINE


async def explain(request: web.Request) -> web.Response:
    """Run the pipeline in dry-run mode and report what each stage would do."""
    ctx = build_context(request, await read_body(request))
    ctx.dry_run = True
    as_sent = dict(ctx.body)  # stages replace top-level fields, never edit them in place
    tools_before = len(ctx.body.get("tools") or ctx.body.get("functions") or [])
    messages_before = len(ctx.messages)
    # an rpm refusal comes before counting
    reply = await request.app[PIPELINE].current(ctx)
    before = await tokens.count_request_async(as_sent)
    after = await tokens.count_request_async(ctx.body) if reply.stage == "upstream" else 0
    report = {
        "object": "proxy.explanation",
        "answered_by": reply.stage,
        "requested_model": ctx.requested_model,
        "model": ctx.model if reply.stage == "upstream" else ctx.requested_model,
        "prompt_tokens": {"as_sent": before, "forwarded": after, "saved": before - after},
        "messages": {"as_sent": messages_before, "forwarded": len(ctx.messages)},
        "tools": {"as_sent": tools_before,
                  "forwarded": len(ctx.body.get("tools") or ctx.body.get("functions") or [])},
        "trace": [d.to_dict() for d in ctx.trace],
    }
    return web.Response(body=orjson.dumps(report), content_type="application/json")
