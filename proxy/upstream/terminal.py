"""The end of every pipeline: hand the request to the upstream client."""

from __future__ import annotations

import time

from proxy.pipeline.core import Chunks, Context, Reply
from proxy.pipeline.prompt_cache import conversation_key
from proxy.upstream.client import UpstreamClient


class UpstreamTerminal:
    """Forwards the request as the stages left it; in dry runs only says where it would go.

    It notes the time spent on the upstream in `ctx.upstream_ms` (for streams,
    until the last chunk), so the ledger can tell upstream latency from proxy overhead.
    A request without a `prompt_cache_key` gets its conversation's (unless the upstream's
    `prompt_cache_key = false`), so every turn reaches the cache its earlier turns filled.
    """

    name = "upstream"

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client

    async def __call__(self, ctx: Context) -> Reply:
        upstream = self.client.upstream_for(ctx.model)
        if ctx.dry_run:
            ctx.decide(self.name, "would_forward", f"to {upstream.name} as {ctx.model}",
                       upstream=upstream.name, model=ctx.model)
            return Reply(status=200, body=b"{}", stage=self.name, model=ctx.model)
        if upstream.prompt_cache_key and "prompt_cache_key" not in ctx.body:
            ctx.add_field("prompt_cache_key",
                          conversation_key(ctx.tenant.namespace, ctx.client_body.get("messages")
                                           or ()))
        if ctx.stream and not ctx.client_wants_usage:
            # ask for usage so the ledger is exact; the client never sees that chunk
            if "stream_options" in ctx.body:
                ctx.body["stream_options"] = {**(ctx.body.get("stream_options") or {}),
                                              "include_usage": True}
                ctx.changed()
            else:
                ctx.add_field("stream_options", {"include_usage": True})
        started = time.perf_counter()
        try:
            reply = await self.client.send(ctx)
        finally:
            ctx.upstream_ms = (time.perf_counter() - started) * 1000.0
        if reply.chunks is not None:
            reply.chunks = timed(reply.chunks, ctx, started)
        return reply


async def timed(chunks: Chunks, ctx: Context, started: float) -> Chunks:
    """Pass `chunks` on; at their end note the time since `started` as upstream time."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        ctx.upstream_ms = (time.perf_counter() - started) * 1000.0
        await chunks.aclose()  # type: ignore[attr-defined]
