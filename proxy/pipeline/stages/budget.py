"""Stage `budget`: tokens per minute and USD spend per key, reserved just before upstream.

It runs last, so the request is priced as it will really go (the routed model, the
trimmed context), and free answers never reach it: they cost no budget. It holds
the estimate (prompt tokens x input price + max_tokens, or the configured
completion estimate, x output price) atomically; a request that does not fit gets
429 `insufficient_quota` (budget) or `rate_limit_exceeded` (tpm). Afterwards the
hold is settled to the upstream's usage, or released when the request failed. A
stream settles when it ends, however it ends: a stream the client left is read on
to the upstream's usage chunk (pipeline/drain.py), and one without that chunk has
its usage counted from what it streamed (upstream/meter.py).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

from proxy import tokens
from proxy.alerts import AlertSender, crossed
from proxy.config import KeyConfig, Section
from proxy.errors import QuotaExceeded, RateLimited
from proxy.periods import current_period
from proxy.pipeline.budget_left import BUDGET_LEFT, BudgetLeft
from proxy.pipeline.core import Context, Next, Reply
from proxy.pipeline.ratelimit_headers import duration, record_window, retry_after
from proxy.pipeline.stream_end import call_when_stream_ends
from proxy.pricing import PriceTable
from proxy.resources import Resources
from proxy.store.limits import Ask, LimitStore, Settled, Verdict, to_nanos, to_usd

log = logging.getLogger("proxy.budget")


@dataclass(frozen=True, slots=True)
class Rules:
    """`[budget]`: completion tokens assumed without max_tokens; longest hold of a reservation."""

    completion_estimate: int = 1024
    reservation_seconds: float = 900.0


def parse_rules(section: Section) -> Rules:
    """Validate the `[budget]` table."""
    section.reject_unknown({"completion_estimate", "reservation_seconds"})
    return Rules(
        completion_estimate=section.int("completion_estimate", 1024, minimum=1),
        reservation_seconds=section.float("reservation_seconds", 900.0, minimum=1.0),
    )


def build(rules: Rules, resources: Resources) -> Budget:
    """The budget stage over the shared limit store; it also serves what is left of each
    key's budget to /metrics and /v1/proxy/budgets (`BudgetLeft`)."""
    resources.kept.replace(BUDGET_LEFT, BudgetLeft(resources.keys, resources.limits,
                                                   resources.config.server.timezone))
    return Budget(rules, resources.limits, resources.prices,
                  resources.config.server.timezone, resources.alerts,
                  resources.config.alerts_daily_usd)


def completion_tokens_asked(body: dict[str, object], default: int) -> int:
    """Completion tokens the request may use: its max_(completion_)tokens x n, or the default."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    n = body.get("n")
    per_choice = limit if isinstance(limit, int) and limit > 0 else default
    return per_choice * (n if isinstance(n, int) and n > 0 else 1)


def key_ask(key: KeyConfig, tokens_asked: int, cost_usd: float, timezone: str,
            lease_seconds: float) -> Ask:
    """What one upstream call for `key` asks to hold: its tokens and cost, within the key's
    tpm and budget for the current period."""
    return Ask(tokens=tokens_asked, cost=to_nanos(cost_usd), tpm=key.tpm,
               budget=None if key.budget_usd is None else to_nanos(key.budget_usd),
               period=current_period(key.budget_period, timezone, time.time()),
               lease_seconds=lease_seconds)


def _refusal(key: KeyConfig, ask: Ask, verdict: Verdict) -> RateLimited:
    if verdict.reason == "tpm":
        window = verdict.tokens
        assert window is not None
        return RateLimited(
            f"Rate limit reached for key '{key.name}' on tokens per min (TPM): Limit "
            f"{window.limit}, Used {window.used}, Requested {ask.tokens}. Please try again in "
            f"{duration(verdict.retry_after)}.",
            headers={"Retry-After": retry_after(verdict.retry_after)})
    budget = to_usd(ask.budget or 0)
    shown = f"{budget:,.2f}" if budget >= 0.01 else f"{budget:.6f}"  # not "$0.00" for cents
    return QuotaExceeded(
        f"You exceeded your current quota: key '{key.name}' has spent "
        f"${to_usd(verdict.spent):.6f} of its ${shown} {key.budget_period} budget "
        f"(${to_usd(verdict.reserved):.6f} more is held by requests in flight) and this "
        f"request may cost up to ${to_usd(ask.cost):.6f}.",
        headers={"x-should-retry": "false"})


class Budget:
    """Reserves, settles and releases each upstream call's tokens and cost."""

    name = "budget"

    def __init__(self, rules: Rules, limits: LimitStore, prices: PriceTable, timezone: str,
                 alerts: AlertSender | None, daily_usd: tuple[float, ...]) -> None:
        self.rules, self.limits, self.prices, self.timezone = rules, limits, prices, timezone
        self.alerts, self.daily_usd = alerts, daily_usd

    async def estimate(self, ctx: Context, key: KeyConfig) -> Ask:
        """What the request asks to hold: its prompt plus the completion it may produce."""
        return await self.ask_for(key, ctx.body, ctx.model)

    async def ask_for(self, key: KeyConfig, body: dict[str, object], model: str) -> Ask:
        """What a chat `body` sent with `model` asks `key` to hold (also for internal calls)."""
        # memoized per message (trim counted the same messages already); big ones off-loop
        prompt = await tokens.count_request_async(body)
        completion = completion_tokens_asked(body, self.rules.completion_estimate)
        return key_ask(key, prompt + completion, self.prices.cost(model, prompt, completion),
                       self.timezone, self.rules.reservation_seconds)

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        key = ctx.tenant.policy
        if key is None:
            return await call_next(ctx)
        ask = await self.estimate(ctx, key)
        if ctx.dry_run:
            ctx.decide(self.name, "would_reserve", f"up to ${to_usd(ask.cost):.6f}",
                       tokens=ask.tokens, cost_usd=to_usd(ask.cost))
            return await call_next(ctx)
        token = ctx.limit_token or secrets.token_hex(8)
        verdict = await self.limits.reserve(key.name, token, ask)
        headers = record_window(ctx, "tokens", verdict.tokens)
        if not verdict.allowed:
            ctx.decide(self.name, "rejected", f"{verdict.reason} limit reached",
                       limit=verdict.reason, tokens=ask.tokens, cost_usd=to_usd(ask.cost))
            refusal = _refusal(key, ask, verdict)
            refusal.headers = {**headers, **refusal.headers}
            raise refusal
        ctx.decide(self.name, "reserved", f"up to ${to_usd(ask.cost):.6f} held until settled",
                   tokens=ask.tokens, cost_usd=to_usd(ask.cost),
                   spent_usd=to_usd(verdict.spent), period=ask.period.name)
        try:
            reply = await call_next(ctx)
        except BaseException:
            await self._settle(ctx, key, token, ask, None)
            raise
        reply.headers.update(headers)
        if reply.is_stream:
            call_when_stream_ends(reply, lambda: self._settle(ctx, key, token, ask, reply))
        else:
            await self._settle(ctx, key, token, ask, reply)
        return reply

    def billed(self, ctx: Context, reply: Reply | None) -> tuple[int, int] | None:
        """Tokens and nano-dollars the answer used upstream (None: nothing to bill)."""
        usage = reply.usage if reply is not None and reply.ok else None
        if usage is None:
            return None
        assert reply is not None
        return usage.total_tokens, to_nanos(self.prices.usage_cost(reply.model or ctx.model,
                                                                   usage))

    async def _settle(self, ctx: Context, key: KeyConfig, token: str, ask: Ask,
                      reply: Reply | None) -> None:
        """Replace the hold by the real usage; release it when there is none to bill."""
        billed = self.billed(ctx, reply)
        used, cost = billed or (0, 0)
        settled = await self.settle(key, token, ask, used, cost, f"request {ctx.request_id}")
        if settled is not None:
            ctx.decide(self.name, "settled" if billed else "released",
                       f"${to_usd(cost):.6f} billed" if billed else "nothing billed",
                       tokens=used, cost_usd=to_usd(cost), spent_usd=to_usd(settled.spent))

    async def settle(self, key: KeyConfig, token: str, ask: Ask, used: int, cost: int,
                     what: str) -> Settled | None:
        """Replace `key`'s hold `token` by `used` tokens and `cost` nano-dollars (0, 0
        releases it) and send any spend alert it crosses; None when the store failed
        (logged, naming `what` was settled)."""
        day = current_period("day", self.timezone, time.time())
        try:
            settled = await self.limits.settle(key.name, token, used, cost, ask.period, day)
        except Exception:
            log.exception("could not settle %s of key %s", what, key.name)
            return None
        if self.alerts is not None:
            self.alerts.notify(crossed(key, settled, ask.period, day, self.daily_usd))
        return settled
