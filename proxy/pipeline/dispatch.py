"""Send a Context through the pipeline and write its ledger (and body-log) row.

Shared by every entry point that runs chat requests (the chat completions
handler, thread runs), so a request is accounted for the same way wherever it
came from: failures and complete replies are recorded here, a streamed reply
by `record` once its chunks are done. The answer is captured on the way for
keys that log bodies and for the ledger's note of which tools were called.
"""

from __future__ import annotations

from proxy.accounting import ledger_entry
from proxy.errors import ProxyError
from proxy.observe.capture import AnswerCapture
from proxy.pipeline.core import Context, Next, Reply
from proxy.resources import Resources


async def dispatch(pipeline: Next, ctx: Context, resources: Resources) -> Reply:
    """The pipeline's reply; the ledger row is written unless the reply is a stream."""
    capture = AnswerCapture(ctx)
    try:
        reply = await pipeline(ctx)
    except ProxyError as exc:
        record(resources, ctx, None, status=exc.status, error=exc.message)
        raise
    capture.attach(ctx, reply)
    ctx.answer_capture = capture
    if not reply.is_stream:
        record(resources, ctx, reply, status=reply.status)
    return reply


def record(resources: Resources, ctx: Context, reply: Reply | None, *, status: int,
           error: str | None = None) -> None:
    """Queue the ledger row of a finished request (and its body-log row, if logged)."""
    capture = ctx.answer_capture
    entry = ledger_entry(ctx, reply, resources.prices, status=status, error=error,
                         answer=capture.answer() if capture else None)
    resources.ledger.record(entry)
    if capture is not None and status < 400 and not entry.error and resources.bodies is not None:
        body = capture.body_record(ctx, entry.ts)
        if body is not None:
            resources.bodies.record(body)
