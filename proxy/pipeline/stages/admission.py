"""Stage `admission`: requests per minute and concurrent requests per key, checked first.

A request over a limit gets 429 `rate_limit_exceeded` with `Retry-After` before any
other work. Every request counts towards rpm, free answers (patterns, caches)
and dry runs (the explain endpoint) included: rpm protects the proxy itself, not
only the upstream bill. The stage
also puts OpenAI's `x-ratelimit-*` headers (requests, and tokens as the budget
stage leaves them) on every reply and error of a key that has limits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from proxy.config import Section
from proxy.errors import ProxyError, RateLimited
from proxy.pipeline.core import Context, Next, Reply
from proxy.pipeline.ratelimit_headers import duration, record_window, retry_after
from proxy.pipeline.stream_end import call_when_stream_ends
from proxy.resources import Resources
from proxy.store.limits import Limits, LimitStore, Verdict


@dataclass(frozen=True, slots=True)
class Rules:
    """`[admission]`: how long a request may hold a concurrency slot at most."""

    lease_seconds: float = 600.0


def parse_rules(section: Section) -> Rules:
    """Validate the `[admission]` table."""
    section.reject_unknown({"lease_seconds"})
    return Rules(lease_seconds=section.float("lease_seconds", 600.0, minimum=1.0))


def build(rules: Rules, resources: Resources) -> Admission:
    """The admission stage over the shared limit store."""
    return Admission(rules, resources.limits)


def _refusal(name: str, verdict: Verdict) -> str:
    if verdict.reason == "concurrency":
        return (f"Too many concurrent requests for key '{name}'. Please try again when one of "
                "your requests in flight has finished.")
    window = verdict.requests
    assert window is not None
    return (f"Rate limit reached for key '{name}' on requests per min (RPM): Limit "
            f"{window.limit}, Used {window.used}, Requested 1. Please try again in "
            f"{duration(verdict.retry_after)}.")


class Admission:
    """Counts each request against its key's rpm and concurrency cap, or refuses it."""

    name = "admission"

    def __init__(self, rules: Rules, limits: LimitStore) -> None:
        self.rules = rules
        self.limits = limits

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        policy = ctx.tenant.policy
        if policy is None or not (policy.rpm or policy.tpm or policy.max_concurrent):
            return await call_next(ctx)
        limits = Limits(policy.rpm, policy.tpm, policy.max_concurrent)
        key = ctx.tenant.name
        token = ctx.limit_token = secrets.token_hex(8)
        verdict = await self.limits.admit(key, token, limits, self.rules.lease_seconds)
        record_window(ctx, "requests", verdict.requests)
        headers = record_window(ctx, "tokens", verdict.tokens)
        if not verdict.allowed:
            ctx.decide(self.name, "rejected", f"{verdict.reason} limit reached",
                       limit=verdict.reason)
            raise RateLimited(_refusal(key, verdict),
                              headers={**headers, "Retry-After": retry_after(verdict.retry_after)})
        used = verdict.requests.used if verdict.requests else None
        ctx.decide(self.name, "admitted", "within the key's request limits",
                   requests_this_minute=used, rpm=policy.rpm)

        async def finish() -> None:
            if policy.max_concurrent:
                await self.limits.finish(key, token)

        try:
            reply = await call_next(ctx)
        except ProxyError as exc:
            await finish()
            exc.headers = {**ctx.ratelimit_headers, **exc.headers}
            raise
        except BaseException:
            await finish()
            raise
        reply.headers.update(ctx.ratelimit_headers)
        if reply.is_stream:
            call_when_stream_ends(reply, finish)
        else:
            await finish()
        return reply
