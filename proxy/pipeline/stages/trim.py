"""Context trimming: system messages + the recent turns + one stored summary of the rest.

A request whose conversation (messages other than system/developer) is longer
than `keep_last` messages, or whose prompt exceeds `max_prompt_tokens`, is cut:
the older turns are replaced by one system message summarizing them (made by a
cheap model, stored, reused; see `summary.py`), the system/developer messages
and the recent turns stay verbatim. The cut falls on a multiple of
`summarize_every` conversation messages, so the summarized prefix (and hence
its stored summary) changes only every that many messages as a conversation
grows, and it is moved earlier rather than separate a tool result from the
assistant message that called it. The summary call is billed to the requesting
key's budget and tpm (charges.py); if the key has no room for it, or it fails,
the older turns are simply dropped and the trace says why.

`plan_trim` and `TrimPlan` are plain functions of a message list, reused by
thread runs (which keep the summary on the thread); /v1/responses keeps it with
each stored response of a chain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from proxy import tokens
from proxy.config import Section
from proxy.kept import KeptKey
from proxy.pipeline.charges import KeyCharges, charges_of, internal_call_entry
from proxy.pipeline.core import Context, Next, Reply, Usage
from proxy.pipeline.summary import (
    DEFAULT_PROMPT,
    Summarizer,
    Summary,
    SummaryRules,
    summary_key,
    summary_message,
)

# Thread runs and response chains hand in the summary stored with them and keep the one
# this stage used.

if TYPE_CHECKING:
    from proxy.resources import Resources

INSTRUCTION_ROLES = frozenset({"system", "developer"})
RESULT_ROLES = frozenset({"tool", "function"})
Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TrimRules:
    """The `[trim]` table: how much history is sent, and how the rest is summarized."""

    enabled: bool = True
    keep_last: int = 20
    max_prompt_tokens: int = 3000
    summarize: bool = True
    summarize_every: int = 10
    summary: SummaryRules = field(default_factory=SummaryRules)


def parse_rules(section: Section) -> TrimRules:
    """Validate the `[trim]` table (errors name file, table and field)."""
    section.reject_unknown({"enabled", "keep_last", "max_prompt_tokens", "summarize",
                            "summarize_every", "summary_model", "summary_max_tokens",
                            "summary_prompt", "summary_ttl_days"})
    keep_last = section.int("keep_last", 20, minimum=1)
    every = section.int("summarize_every", 10, minimum=1)
    if every > keep_last:
        raise section.error(f"must be <= keep_last ({keep_last}), got {every}",
                            "summarize_every")
    model = section.str("summary_model", "gpt-4o-mini")
    if not model:
        raise section.error("must name a model", "summary_model")
    ttl_days = section.float("summary_ttl_days", 30.0, minimum=0.0)
    return TrimRules(
        enabled=section.bool("enabled", True),
        keep_last=keep_last,
        max_prompt_tokens=section.int("max_prompt_tokens", 3000, minimum=100),
        summarize=section.bool("summarize", True),
        summarize_every=every,
        summary=SummaryRules(
            model=model,
            max_tokens=section.int("summary_max_tokens", 200, minimum=16),
            prompt=section.str("summary_prompt", DEFAULT_PROMPT),
            ttl_seconds=ttl_days * 86400.0 if ttl_days else None,
        ),
    )


INFLIGHT: KeptKey[dict[str, asyncio.Task[tuple[str, Usage | None]]]] = KeptKey("trim")


def build(rules: TrimRules, resources: Resources) -> ContextTrimmer:
    """The stage for these rules; in-flight summaries are shared across reloads."""
    inflight = resources.kept.setdefault(INFLIGHT, dict)
    return ContextTrimmer(rules, Summarizer(rules.summary, resources.upstream, resources.kv,
                                            inflight), resources, charges_of(resources))


@dataclass(frozen=True, slots=True)
class TrimPlan:
    """Where one message list is cut.

    `head` are the system/developer messages from the cut-off part (kept first),
    `summarized` the older turns the summary replaces, `tail` the messages kept
    verbatim. Nothing to cut: `summarized` is empty and `tail` is everything.
    Token counts include tool definitions; `kept_tokens` excludes the summary.
    """

    head: tuple[Message, ...]
    summarized: tuple[Message, ...]
    tail: tuple[Message, ...]
    tokens_before: int
    kept_tokens: int
    why: str

    @property
    def cuts(self) -> bool:
        """True when some messages are to be summarized or dropped."""
        return bool(self.summarized)

    def messages(self, summary: str | None) -> list[Message]:
        """The trimmed list: head, the summary message (if any), tail.

        The summary speaks with the role of the first instruction (system, or
        developer for apps that use only developer messages).
        """
        role = str(self.head[0].get("role")) if self.head else "system"
        return [*self.head, *([summary_message(summary, role)] if summary else []), *self.tail]


def plan_trim(messages: Sequence[Message], rules: TrimRules, model: str = "gpt-4o",
              tools: Any = None) -> TrimPlan:
    """Choose the cut for `messages` under `rules` (pure; CPU-bound for long lists)."""
    costs = [tokens.message_tokens(m, model) for m in messages]
    fixed = 3 + tokens.tool_tokens(tools, model)
    total = fixed + sum(costs)
    turns = [i for i, m in enumerate(messages) if m.get("role") not in INSTRUCTION_ROLES]
    n = len(turns)
    if n <= rules.keep_last and total <= rules.max_prompt_tokens:
        return TrimPlan((), (), tuple(messages), total, total,
                        f"{n} messages, {total} tokens: within keep_last {rules.keep_last} "
                        f"and max_prompt_tokens {rules.max_prompt_tokens}")
    step = rules.summarize_every
    fixed += sum(c for m, c in zip(messages, costs) if m.get("role") in INSTRUCTION_ROLES)
    fixed += rules.summary.max_tokens + 12 if rules.summarize else 0
    suffix = [0] * (n + 1)
    for j in range(n - 1, -1, -1):
        suffix[j] = suffix[j + 1] + costs[turns[j]]
    cut = max(step, -(-(n - rules.keep_last) // step) * step)
    while cut < n - 1 and fixed + suffix[cut] > rules.max_prompt_tokens:
        cut += step
    cut = min(cut, n - 1)
    while cut > 0 and messages[turns[cut]].get("role") in RESULT_ROLES:
        cut -= 1
    if cut <= 0:
        return TrimPlan((), (), tuple(messages), total, total,
                        "over the limits, but no cut keeps each tool result with its call")
    older = sum(costs[i] for i in turns[:cut])
    if rules.summarize and total <= rules.max_prompt_tokens and older <= rules.summary.max_tokens:
        return TrimPlan((), (), tuple(messages), total, total,
                        f"{n} messages > keep_last {rules.keep_last}, but the {cut} older ones "
                        f"({older} tokens) are shorter than a summary")
    first_kept = turns[cut]
    head = tuple(m for m in messages[:first_kept] if m.get("role") in INSTRUCTION_ROLES)
    summarized = tuple(m for m in messages[:first_kept] if m.get("role") not in INSTRUCTION_ROLES)
    tail = tuple(messages[first_kept:])
    kept = total - older
    over = f"{n} messages > keep_last {rules.keep_last}" if n > rules.keep_last else (
        f"{total} tokens > max_prompt_tokens {rules.max_prompt_tokens}")
    return TrimPlan(head, summarized, tail, total, kept,
                    f"{over}: keeping the last {n - cut} of {n} messages")


async def plan_trim_async(messages: Sequence[Message], rules: TrimRules, model: str = "gpt-4o",
                          tools: Any = None) -> TrimPlan:
    """plan_trim, in a worker thread when the history is large."""
    if tokens.is_large(messages):
        return await asyncio.to_thread(plan_trim, messages, rules, model, tools)
    return plan_trim(messages, rules, model, tools)


class ContextTrimmer:
    """Sends system messages + recent turns + a stored summary instead of the whole history."""

    name = "trim"

    def __init__(self, rules: TrimRules, summarizer: Summarizer, resources: Resources,
                 charges: KeyCharges) -> None:
        self.rules = rules
        self.summarizer = summarizer
        self.resources = resources
        self.charges = charges

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        if not self.rules.enabled:
            return await call_next(ctx)
        tools = ctx.body.get("tools") or ctx.body.get("functions")
        plan = await plan_trim_async(ctx.messages, self.rules, ctx.model, tools)
        if not plan.cuts:
            ctx.decide(self.name, "pass", plan.why, messages_kept=len(plan.tail),
                       messages_dropped=0, tokens_saved=0)
            return await call_next(ctx)
        if ctx.baseline_prompt_tokens is None:
            ctx.baseline_prompt_tokens = plan.tokens_before
        summary = await self._summary(ctx, plan)
        text = summary.text if summary else None
        if summary is not None and text is not None:
            ctx.new_summary = {"key": summary.key, "text": text}
        if summary is not None and summary.source == "missing":  # dry run: show its place
            text = (f"(dry run: a summary of {len(plan.summarized)} earlier messages by "
                    f"{self.rules.summary.model} goes here)")
        ctx.body["messages"] = plan.messages(text)
        ctx.changed()
        self._decide(ctx, plan, summary)
        return await call_next(ctx)

    async def _summary(self, ctx: Context, plan: TrimPlan) -> Summary | None:
        if not self.rules.summarize:
            return None
        on_thread = ctx.prior_summary
        if on_thread is not None:
            key = summary_key(plan.summarized, self.summarizer.rules)
            if on_thread.get("key") == key and isinstance(on_thread.get("text"), str):
                return Summary(on_thread["text"], "thread", key)
        started = time.perf_counter()
        summary = await self.summarizer.summarize(
            f"summary:{ctx.tenant.namespace}", plan.summarized, step=self.rules.summarize_every,
            dry_run=ctx.dry_run, complete=self.charges.complete_for(ctx))
        if summary.source == "made":
            self._record_cost(ctx, summary, started)
        return summary

    def _decide(self, ctx: Context, plan: TrimPlan, summary: Summary | None) -> None:
        dropped = len(plan.summarized)
        model = self.rules.summary.model
        data: dict[str, Any] = {"messages_kept": len(plan.head) + len(plan.tail),
                                "messages_dropped": dropped}
        if summary is None or summary.text is None:
            after = plan.kept_tokens
            if summary is None:
                action, why = "truncated", f"{plan.why}; summaries are off (trim.summarize)"
            elif summary.source == "missing":
                action = "would_summarize"
                why = f"{plan.why}; {dropped} older messages would be summarized by {model}"
                after += self.rules.summary.max_tokens
            else:
                action = "truncated"
                why = (f"{plan.why}; the summary by {model} failed ({summary.error}), "
                       f"so {dropped} older messages were dropped")
        else:
            summary_tokens = tokens.message_tokens(summary_message(summary.text), ctx.model)
            after = plan.kept_tokens + summary_tokens
            action, why = "summarized", (f"{plan.why}; {dropped} older messages replaced by "
                                         f"a summary ({summary.source})")
        if summary is not None:
            data.update(summary=summary.source, summary_key=summary.key)
            if summary.usage is not None:
                data.update(summary_tokens=summary.usage.total_tokens)
        ctx.decide(self.name, action, why, tokens_before=plan.tokens_before,
                   tokens_after=after, tokens_saved=plan.tokens_before - after, **data)

    def _record_cost(self, ctx: Context, summary: Summary, started: float) -> None:
        """A ledger row for the summary call itself, so savings are reported net of it."""
        self.resources.ledger.record(internal_call_entry(
            ctx, self.resources.prices, self.rules.summary.model, summary.usage, started,
            self.name, "summary", orjson.dumps({"summary_key": summary.key}).decode()))
