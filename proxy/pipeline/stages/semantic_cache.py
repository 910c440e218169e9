"""Semantic cache stage: answer a reworded question with the stored answer of the original.

Only standalone questions take part: the last user message is embedded (locally,
micro-batched off the event loop) and classified (`standalone`, a learned model
with a calibrated error rate); follow-ups, questions about the user's own state
and chat never read or write entries. The nearest entries of the same scope
(tenant namespace, requested model, instructions hash, tool names) above
`threshold` are verified by the learned pair model (`pair_model`, calibrated to
`max_wrong_rate`) and, when configured, a judge model; the first that passes is
served as JSON or SSE with `x-proxy-cache: hit-semantic; similarity=0.93`. On a
miss, a successful upstream answer is stored (a stream once [DONE] has passed).
Request header `x-proxy-cache: no-cache | no-store | refresh` as for the exact cache.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from proxy.config import Section
from proxy.kept import KeptKey
from proxy.pipeline.analysis import LastMessage
from proxy.pipeline.cache_control import HEADER, CacheDirectives, unstorable
from proxy.pipeline.charges import charges_of
from proxy.pipeline.core import Context, Next, Reply, Usage
from proxy.pipeline.replies import completion_id, free_reply, when_answered
from proxy.pipeline.semantic.index import Entry, Scope, SemanticEntries
from proxy.pipeline.semantic.judge import Judge
from proxy.pipeline.semantic.pair_model import PairModel, packaged_pairs
from proxy.pipeline.semantic.paraphrase import pair_conflict
from proxy.pipeline.semantic.standalone import MessageAnalyzer, analyzer_of
from proxy.pipeline.text import MAX_ANALYZED_CHARS, content_text

if TYPE_CHECKING:
    from proxy.resources import Resources



@dataclass(frozen=True, slots=True)
class Rules:
    """The `[semantic_cache]` table."""

    threshold: float = 0.75
    max_wrong_rate: float = 0.02
    candidates: int = 4
    ttl_seconds: float | None = 86_400.0
    max_entries: int = 100_000
    max_prior_user_turns: int = 50
    judge_model: str = ""
    judge_below: float = 0.90


DEFAULTS = Rules()
ENTRIES: KeptKey[SemanticEntries] = KeptKey("semantic_entries")
PAIR_MODEL: KeptKey[PairModel] = KeptKey("pair_model")


def parse_rules(section: Section) -> Rules:
    """Validate `[semantic_cache]`."""
    section.reject_unknown({"threshold", "max_wrong_rate", "candidates", "ttl_seconds",
                            "max_entries", "max_prior_user_turns", "judge_model", "judge_below"})
    rules = Rules(
        threshold=section.float("threshold", DEFAULTS.threshold, minimum=0.0),
        max_wrong_rate=section.float("max_wrong_rate", DEFAULTS.max_wrong_rate, minimum=0.0),
        candidates=section.int("candidates", DEFAULTS.candidates, minimum=1),
        ttl_seconds=section.float("ttl_seconds", DEFAULTS.ttl_seconds, minimum=1.0),
        max_entries=section.int("max_entries", DEFAULTS.max_entries, minimum=1),
        max_prior_user_turns=section.int("max_prior_user_turns", DEFAULTS.max_prior_user_turns,
                                         minimum=0),
        judge_model=section.str("judge_model", ""),
        judge_below=section.float("judge_below", DEFAULTS.judge_below, minimum=0.0),
    )
    if rules.max_wrong_rate >= 1.0:
        raise section.error(f"must be below 1, got {rules.max_wrong_rate}", "max_wrong_rate")
    for key in ("threshold", "judge_below"):
        if getattr(rules, key) > 1.0:
            raise section.error(f"a cosine similarity must be <= 1, got {getattr(rules, key)}",
                                key)
    return rules


def scope_of(ctx: Context) -> Scope:
    """Which entries may answer this request: same namespace, model, instructions, tools."""
    instructions = [m.get("content") for m in ctx.messages
                    if m.get("role") in ("system", "developer")]
    digest = hashlib.sha256(orjson.dumps(
        [instructions, ctx.body.get("response_format")], option=orjson.OPT_SORT_KEYS)).hexdigest()
    tools = ctx.body.get("tools") or []
    names = sorted(str((t.get("function") or {}).get("name", "")) for t in tools
                   if isinstance(t, dict))
    return (ctx.tenant.namespace, ctx.requested_model, digest[:16], ",".join(names))


def unstorable_answer(ctx: Context, reply: Reply, completion: Any) -> str | None:
    """Why not to store: only plain, finished text answers are replayed to someone else."""
    why = unstorable(ctx, reply, completion)
    if why:
        return why
    choice = completion["choices"][0]
    message = choice.get("message") or {}
    if choice.get("finish_reason") != "stop" or message.get("tool_calls") \
            or not message.get("content"):
        return "not a finished plain-text answer"
    return None


class SemanticCache:
    """The `semantic_cache` stage."""

    name = "semantic_cache"

    def __init__(self, rules: Rules, entries: SemanticEntries, analyzer: MessageAnalyzer,
                 verifier: PairModel, judge: Judge | None = None) -> None:
        self.rules = rules
        self.entries = entries
        self.analyzer = analyzer
        self.verifier = verifier
        self.judge = judge

    async def standalone(self, ctx: Context) -> tuple[LastMessage | None, str]:
        """The standalone question to look up, or None and why this request takes no part."""
        if int(ctx.body.get("n") or 1) > 1:
            return None, "n > 1"
        prior = sum(1 for m in ctx.messages[:-1] if m.get("role") == "user")
        if prior > self.rules.max_prior_user_turns:
            return None, f"{prior} earlier user turns (max_prior_user_turns)"
        if ctx.messages and len(content_text(ctx.messages[-1].get("content"))) \
                > MAX_ANALYZED_CHARS:
            return None, f"last message is longer than {MAX_ANALYZED_CHARS} characters"
        message = await self.analyzer.analyze(ctx)
        if message is None:
            return None, "last message is not a plain-text user message"
        if not message.verdict.standalone:
            return None, f"not standalone: {message.verdict.why}"
        return message, ""

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        directives = CacheDirectives.from_headers(ctx.headers)
        message, why = await self.standalone(ctx)
        if message is None:
            ctx.decide(self.name, "skip", why)
            return await call_next(ctx)
        question, vector = message.cleaned, message.vector
        scope = scope_of(ctx)
        await self.entries.ensure_loaded(scope[0])
        if not directives.read:
            ctx.decide(self.name, "skip_read", f"x-proxy-cache: {directives.raw}")
        else:
            hit = await self.lookup(ctx, scope, question, vector)
            if hit is not None:
                return hit
        if not directives.store or ctx.dry_run:
            return await call_next(ctx)
        reply = await call_next(ctx)
        if reply.ok and reply.stage == "upstream":
            key = hashlib.sha256(orjson.dumps([*scope, question])).hexdigest()[:32]
            pending = Entry(key, scope, question, vector, {}, time.time(), None)

            async def store(completion: Any) -> None:
                why = unstorable_answer(ctx, reply, completion)
                if why:
                    ctx.decide(self.name, "not_stored", why)
                else:
                    await self._store(pending, completion, reply.usage)

            if reply.chunks is not None:
                when_answered(reply, store)
            else:
                await store(reply.json())
        return reply

    async def lookup(self, ctx: Context, scope: Scope, question: str,
                     vector: np.ndarray) -> Reply | None:
        """The verified nearest entry served as a reply, or None (decision recorded)."""
        found = await self.entries.search(scope, vector, self.rules.candidates)
        rejected = []
        for entry, similarity in found:
            if similarity < self.rules.threshold:
                break
            why = await self._differ(question, entry, vector)
            if why is None and self.judge is not None and similarity < self.judge.below:
                why = await self.judge.differ(ctx, question, entry.text)
            if why is None:
                await self.entries.touch(entry)
                ctx.decide(self.name, "hit", f"similarity {similarity:.2f} to {entry.text!r}",
                           similarity=round(similarity, 4), matched=entry.text)
                return self._reply(ctx, entry, similarity)
            rejected.append(f"{entry.text!r} ({similarity:.2f}): {why}")
        best = f"best similarity {found[0][1]:.2f}" if found else "no entries in scope"
        ctx.decide(self.name, "miss", "; ".join(rejected) or best,
                   similarity=round(found[0][1], 4) if found else None)
        return None

    async def _differ(self, question: str, entry: Entry, vector: np.ndarray) -> str | None:
        """Why the pair model rejects the stored question, or None when it may answer."""
        p, needed = await self.verifier.score(question, entry.text, vector, entry.vector)
        if p >= needed:
            return None
        guard = pair_conflict(question, entry.text)
        return f"same-score {p:.2f} < {needed:.2f}" + (f" ({guard})" if guard else "")

    def _reply(self, ctx: Context, entry: Entry, similarity: float) -> Reply:
        completion = {**entry.completion, "id": completion_id(), "created": int(time.time())}
        return free_reply(ctx, completion, stage=self.name,
                          saved_usage=Usage.from_openai(completion.get("usage")),
                          headers={HEADER: f"hit-semantic; similarity={similarity:.2f}"})

    async def _store(self, pending: Entry, completion: Any, usage: Usage | None) -> None:
        if usage is not None:
            completion = {**completion, "usage": {
                "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens}}
        ttl = self.rules.ttl_seconds
        pending.completion = completion
        pending.expires = time.time() + ttl if ttl else None
        await self.entries.add(pending, ttl)


def build(rules: Rules, resources: Resources) -> SemanticCache:
    """The stage, sharing one analyzer, pair model and entry set across rule reloads."""
    analyzer = analyzer_of(resources)
    entries = resources.kept.get(ENTRIES)
    if entries is None:
        entries = resources.kept.replace(ENTRIES, SemanticEntries(resources.kv,
                                                                  rules.max_entries))
        for tenant in resources.keys.tenants():
            entries.start_loading(tenant.namespace)
    entries.max_entries = rules.max_entries
    judge = Judge(rules.judge_model, rules.judge_below, charges_of(resources), resources.ledger,
                  resources.prices) if rules.judge_model else None
    return SemanticCache(rules, entries, analyzer, pair_model_of(resources, rules), judge)


def pair_model_of(resources: Resources, rules: Rules) -> PairModel:
    """The process's pair model, refitted only when its calibration targets change."""
    wanted = (rules.threshold, rules.max_wrong_rate)
    model = resources.kept.get(PAIR_MODEL)
    if model is None or (model.candidate_threshold, model.max_wrong_rate) != wanted:
        model = resources.kept.replace(PAIR_MODEL, PairModel(
            analyzer_of(resources).embedder, packaged_pairs(), *wanted))
        model.fitted.start()
    return model
