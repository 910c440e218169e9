"""The end of every pipeline: hand the request to the upstream client."""

from __future__ import annotations

from proxy.pipeline.core import Context, Reply
from proxy.upstream.client import UpstreamClient


class UpstreamTerminal:
    """Forwards the request as the stages left it; in dry runs only says where it would go."""

    name = "upstream"

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client

    async def __call__(self, ctx: Context) -> Reply:
        upstream = self.client.upstream_for(ctx.model)
        if ctx.dry_run:
            ctx.decide(self.name, "would_forward", f"to {upstream.name} as {ctx.model}",
                       upstream=upstream.name, model=ctx.model)
            return Reply(status=200, body=b"{}", stage=self.name, model=ctx.model)
        if ctx.stream and not ctx.client_wants_usage:
            # ask for usage so the ledger is exact; the client never sees that chunk
            ctx.body["stream_options"] = {**(ctx.body.get("stream_options") or {}),
                                          "include_usage": True}
            ctx.changed()
        return await self.client.send(ctx)
