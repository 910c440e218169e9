"""Answer a request from the pipeline's free stages only, never calling upstream.

The stages that can answer by themselves (pattern replies, the exact and the semantic
cache) and the stages that shape what goes upstream without calling it (routing, tool
stripping) are taken from the pipeline in force, in its order, and ended by a terminal
that answers "not answered": a miss goes no further, and since that answer is not the
upstream's, no cache stores it. Hits are real hits (counted, refreshed). After a miss the
request's body is what the upstream is to be sent. Trimming (which may call the
upstream) and the limit stages (a batch is billed once, at the batch price) are left out.
"""

from __future__ import annotations

from proxy.pipeline.core import Context, Next, Pipeline, Reply

FREE_STAGES = frozenset({"patterns", "exact_cache", "semantic_cache"})
SHAPING_STAGES = frozenset({"route", "tools"})
NOT_ANSWERED = "batch_upstream"  # the terminal's stage name: the line goes upstream


async def _not_answered(ctx: Context) -> Reply:
    ctx.decide(NOT_ANSWERED, "defer", "no free answer: sent upstream in the batch")
    return Reply(status=202, stage=NOT_ANSWERED, model=ctx.model)


def chain_of(pipeline: Pipeline, names: frozenset[str], terminal: Next) -> Pipeline:
    """The pipeline's stages called `names`, in its order, ending in `terminal`."""
    return Pipeline([s for s in pipeline.stages if s.name in names], terminal)


def free_chain(pipeline: Pipeline) -> Pipeline:
    """The pipeline's free and shaping stages, ending where the upstream call would be."""
    return chain_of(pipeline, FREE_STAGES | SHAPING_STAGES, _not_answered)


async def free_answer(chain: Pipeline, ctx: Context) -> Reply | None:
    """The free stages' answer to `ctx` (a complete 200 reply), or None."""
    reply = await chain(ctx)
    return reply if reply.stage != NOT_ANSWERED and reply.ok and reply.body else None
