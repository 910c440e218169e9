"""Send a Context through the pipeline and write its ledger row.

Shared by every entry point that runs chat requests (the chat completions
handler, thread runs), so a request is accounted for the same way wherever it
came from: failures and complete replies are recorded here, a streamed reply
by `record` once its chunks are done.
"""

from __future__ import annotations

from proxy.accounting import ledger_entry
from proxy.errors import ProxyError
from proxy.pipeline.core import Context, Next, Reply
from proxy.services import Services


async def dispatch(pipeline: Next, ctx: Context, services: Services) -> Reply:
    """The pipeline's reply; the ledger row is written unless the reply is a stream."""
    try:
        reply = await pipeline(ctx)
    except ProxyError as exc:
        record(services, ctx, None, status=exc.status, error=exc.message)
        raise
    if not reply.is_stream:
        record(services, ctx, reply, status=reply.status)
    return reply


def record(services: Services, ctx: Context, reply: Reply | None, *, status: int,
           error: str | None = None) -> None:
    """Write the ledger row of a finished request."""
    services.ledger.record(ledger_entry(ctx, reply, services.prices, status=status, error=error))
