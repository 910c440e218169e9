"""The stages a pass-through request meets, taken from the pipeline in force.

The rule file decides, as it does for chat: a pass-through request goes through the
pipeline's `admission` stage (rpm and concurrency), its `exact_cache` stage's rules and
entries when it is an embeddings request, and its `budget` stage's limits with a
pass-through estimate, each only when the pipeline has it, in that order, before the
terminal that forwards it. The chat-only stages (patterns, semantic cache, route,
tools, trim) do not apply to bodies that are not chat requests.
"""

from __future__ import annotations

from proxy.pipeline.core import Next, Pipeline, Stage
from proxy.pipeline.passthrough.budget import PassthroughBudget
from proxy.pipeline.passthrough.embeddings_cache import EmbeddingsCache
from proxy.pipeline.stages.budget import Budget
from proxy.pipeline.stages.exact_cache import ExactCache


def passthrough_chain(pipeline: Pipeline, terminal: Next, *, embeddings: bool) -> Pipeline:
    """The chain for one pass-through request (`embeddings`: a POST /v1/embeddings)."""
    stages: list[Stage] = []
    admission = pipeline.stage("admission")
    if admission is not None:
        stages.append(admission)
    exact = pipeline.stage("exact_cache")
    if embeddings and isinstance(exact, ExactCache):
        stages.append(EmbeddingsCache(exact.rules, exact.entries))
    budget = pipeline.stage("budget")
    if isinstance(budget, Budget):
        stages.append(PassthroughBudget(budget, embeddings=embeddings))
    return Pipeline(stages, terminal)
