"""Exact cache: the same request again gets the stored answer, free and at once.

The key is the sha256 of the canonical request (orjson, sorted keys): the tenant's
cache namespace, the requested model (before routing) and every body field that
can change the answer. Fields that cannot (`stream`, `stream_options`,
`store`, `service_tier`, `prompt_cache_key`) never enter the key; the caller's
identity (`user`, `safety_identifier`, `metadata`) enters it only when a rule
makes entries user-specific (`per_user`). Unknown fields always enter it: a
new parameter costs hits, never correctness.

Shared across the key's users only when the last message stands alone
(`share = "standalone"`, the default): an answer to "so what's step two?" or "am
I making progress?" depends on who asks, so it is stored under a key that also
holds the caller's identity (`user`, `safety_identifier`, `metadata`), and not
at all when the request carries none. The standalone classifier runs when the
answer is stored, never on a lookup: a lookup tries the shared key, then the
caller's own. `share = "all"` shares every answer, as before.

Stored: single-choice upstream answers that finished (`stop`, and `length` when
`cache_truncated`: the key holds max_tokens, so the same request would be cut
at the same place), without tool calls unless `cache_tool_calls`. Never stored:
errors, streams that did not reach `[DONE]` or were aborted, answers produced
by a fallback model or by another stage. Streams are assembled from the chunks
that passed through; writes run behind the response (CacheEntries).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from proxy.config import Section
from proxy.kept import KeptKey
from proxy.pipeline.cache_control import HEADER, CacheDirectives, unstorable
from proxy.pipeline.core import Context, Next, Reply, Usage
from proxy.pipeline.replies import completion_id, free_reply, when_answered
from proxy.pipeline.semantic.standalone import MessageAnalyzer, analyzer_of
from proxy.store.cache_entries import CacheEntries, SizeLimits
from proxy.store.kv import StoreError

if TYPE_CHECKING:
    from proxy.resources import Resources

NAME = "exact_cache"
ENTRIES: KeptKey[CacheEntries] = KeptKey(NAME)
NOT_IN_KEY = frozenset({"model", "stream", "stream_options", "store", "service_tier",
                        "prompt_cache_key", "prompt_cache_retention"})
IDENTITY_FIELDS = frozenset({"user", "safety_identifier", "metadata"})
OFF_LOOP_BYTES = 256 * 1024
_POLICY_FIELDS = {"enabled", "ttl_seconds", "per_user", "cache_sampled", "cache_tool_calls",
                  "cache_truncated", "max_user_messages", "share"}
SHARE = ("standalone", "all")


@dataclass(frozen=True, slots=True)
class Policy:
    """What is cached, and for how long, for one kind of request."""

    enabled: bool = True
    ttl_seconds: float = 86_400.0
    per_user: bool = False
    cache_sampled: bool = True
    cache_tool_calls: bool = False
    cache_truncated: bool = True
    max_user_messages: int = 4
    share: str = "standalone"


@dataclass(frozen=True, slots=True)
class Override:
    """A `[[exact_cache.rules]]` entry: a policy for matching models and keys."""

    models: tuple[str, ...] | None
    keys: tuple[str, ...] | None
    policy: Policy

    def matches(self, model: str, key_name: str) -> bool:
        """True when the requested model and the proxy key both match."""
        return ((self.models is None or any(fnmatch.fnmatchcase(model, p) for p in self.models))
                and (self.keys is None or key_name in self.keys))


@dataclass(frozen=True, slots=True)
class Rules:
    """The exact cache's rules: default policy, overrides (first match wins), size bounds."""

    default: Policy = field(default_factory=Policy)
    overrides: tuple[Override, ...] = ()
    limits: SizeLimits = field(default_factory=lambda: SizeLimits(10_000, 64 * 1024 * 1024))

    def policy_for(self, model: str, key_name: str) -> Policy:
        """The policy for a request."""
        return next((o.policy for o in self.overrides if o.matches(model, key_name)),
                    self.default)


def _parse_policy(s: Section, base: Policy, user_ttl: float) -> Policy:
    per_user = s.bool("per_user", base.per_user)
    default_ttl = user_ttl if per_user and not base.per_user else base.ttl_seconds
    return Policy(
        enabled=s.bool("enabled", base.enabled),
        ttl_seconds=s.float("ttl_seconds", default_ttl, minimum=1.0),
        per_user=per_user,
        cache_sampled=s.bool("cache_sampled", base.cache_sampled),
        cache_tool_calls=s.bool("cache_tool_calls", base.cache_tool_calls),
        cache_truncated=s.bool("cache_truncated", base.cache_truncated),
        max_user_messages=s.int("max_user_messages", base.max_user_messages, minimum=1),
        share=s.choice("share", SHARE, base.share),
    )


def parse_rules(section: Section) -> Rules:
    """Validate `[exact_cache]` and its `[[exact_cache.rules]]` (ConfigError names the field)."""
    section.reject_unknown(_POLICY_FIELDS | {"user_ttl_seconds", "max_entries", "max_bytes",
                                             "rules"})
    user_ttl = section.float("user_ttl_seconds", 3_600.0, minimum=1.0)
    default = _parse_policy(section, Policy(), user_ttl)
    overrides = []
    for rule in section.subs("rules"):
        rule.reject_unknown(_POLICY_FIELDS | {"models", "keys"})
        overrides.append(Override(rule.strs("models"), rule.strs("keys"),
                                  _parse_policy(rule, default, user_ttl)))
    limits = SizeLimits(section.int("max_entries", 10_000, minimum=1),
                        section.int("max_bytes", 64 * 1024 * 1024, minimum=1024))
    return Rules(default, tuple(overrides), limits)


def uncacheable_request(body: Mapping[str, Any], policy: Policy) -> str | None:
    """Why a request must not be looked up or stored, or None when it may."""
    if not policy.enabled:
        return "disabled by rule"
    if (body.get("n") or 1) > 1:
        return "n > 1 asks for several different answers"
    temperature = body.get("temperature")
    if not policy.cache_sampled and (temperature is None or temperature > 0):
        return f"sampled (temperature {temperature if temperature is not None else 'default 1'})"
    users = sum(1 for m in body.get("messages") or () if m.get("role") == "user")
    if users > policy.max_user_messages:
        return f"context-dependent: {users} user messages > max_user_messages"
    if body.get("logprobs"):
        return "logprobs asked for: a replay would not carry them"
    if "audio" in (body.get("modalities") or ()):
        return "audio output is not cached"
    return None


def request_key(body: Mapping[str, Any], namespace: str, requested_model: str,
                per_user: bool, endpoint: str | None = None) -> str:
    """The sha256 of the canonical request (`endpoint` names any endpoint but chat
    completions, so that bodies of different endpoints never share a key)."""
    skip = NOT_IN_KEY if per_user else NOT_IN_KEY | IDENTITY_FIELDS
    fields = {k: v for k, v in body.items() if k not in skip}
    canonical: dict[str, Any] = {"namespace": namespace, "model": requested_model,
                                 "request": fields}
    if endpoint is not None:
        canonical["endpoint"] = endpoint
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def unstorable_reply(ctx: Context, reply: Reply, completion: Any, policy: Policy) -> str | None:
    """Why an answer must not be stored, or None when it may."""
    why = unstorable(ctx, reply, completion)
    if why:
        return why
    choices = completion["choices"]
    finish = choices[0].get("finish_reason")
    message = choices[0].get("message") or {}
    if (message.get("tool_calls") or message.get("function_call")) and not policy.cache_tool_calls:
        return "answer has tool_calls (cache_tool_calls = false)"
    allowed = {"stop", "tool_calls"} | ({"length"} if policy.cache_truncated else set())
    if finish not in allowed:
        return f"finish_reason {finish!r}"
    return None


class ExactCache:
    """Answers a repeated request from the store; stores cacheable upstream answers."""

    name = NAME

    def __init__(self, rules: Rules, entries: CacheEntries,
                 analyzer: MessageAnalyzer | None = None) -> None:
        self.rules = rules
        self.entries = entries
        self.analyzer = analyzer

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        policy = self.rules.policy_for(ctx.requested_model, ctx.tenant.name)
        directives = CacheDirectives.from_headers(ctx.headers)
        why_not = uncacheable_request(ctx.body, policy)
        if why_not:
            ctx.decide(self.name, "skip", why_not)
            return marked(await call_next(ctx), "bypass")
        key = await self._key(ctx, policy.per_user)
        own = await self._key(ctx, True) if self._scoped(ctx, policy) else None
        keys = [k for k in (key, own) if k is not None]
        namespace = ctx.tenant.namespace
        if directives.refresh and not ctx.dry_run:
            for k in keys:
                self.entries.delete(namespace, k)
        if directives.read:
            hit = await self._lookup(ctx, namespace, keys)
            if hit is not None:
                return hit
        else:
            ctx.decide(self.name, "bypass", f"{HEADER}: {directives.raw}", key=key[:16])
        reply = marked(await call_next(ctx), "miss" if directives.read else "bypass")
        if not directives.store or ctx.dry_run:
            return reply

        async def store(completion: Any) -> None:
            chosen = await self._store_key(ctx, policy, key, own)
            if chosen is not None:
                self._store(ctx, reply, completion, chosen, policy)

        if reply.is_stream and reply.chunks is not None:
            when_answered(reply, store)
        else:
            await store(_json_or_none(reply))
        return reply

    def _scoped(self, ctx: Context, policy: Policy) -> bool:
        """True when answers may be kept per caller: sharing depends on the message and
        the request names who asks."""
        return (policy.share == "standalone" and not policy.per_user
                and any(ctx.body.get(f) for f in IDENTITY_FIELDS))

    async def _store_key(self, ctx: Context, policy: Policy, shared: str,
                         own: str | None) -> str | None:
        """Where to store the answer: the shared key for a standalone message, else the
        caller's own key; None (decision recorded) when there is no caller to scope it to."""
        if policy.share == "all" or policy.per_user or self.analyzer is None:
            return shared
        message = await self.analyzer.analyze(ctx)
        if message is not None and message.verdict.standalone:
            return shared
        if own is not None:
            return own
        why = message.verdict.why if message is not None else "not a plain-text user message"
        ctx.decide(self.name, "not_stored", f"not shared ({why}) and the request names no "
                   "user to keep it for (user, safety_identifier or metadata)")
        return None

    async def _key(self, ctx: Context, per_user: bool) -> str:
        args = (ctx.body, ctx.tenant.namespace, ctx.requested_model, per_user)
        if len(ctx.raw or b"") > OFF_LOOP_BYTES:
            return await asyncio.to_thread(request_key, *args)
        return request_key(*args)

    async def _lookup(self, ctx: Context, namespace: str, keys: list[str]) -> Reply | None:
        found = await read_stored(self.entries, ctx, self.name, namespace, keys, "completion")
        if found is None:
            return None
        stored, age = found
        completion = {**stored, "id": completion_id(), "created": int(time.time())}
        return free_reply(ctx, completion, stage=self.name,
                          saved_usage=Usage.from_openai(completion.get("usage")),
                          headers={HEADER: "hit-exact", "x-proxy-cache-age": str(age)})

    def _store(self, ctx: Context, reply: Reply, completion: Any, key: str,
               policy: Policy) -> None:
        why_not = unstorable_reply(ctx, reply, completion, policy)
        if why_not:
            ctx.decide(self.name, "not_stored", why_not)
            return
        if not completion.get("usage") and reply.usage is not None:
            completion["usage"] = reply.usage.to_openai()
        write_stored(self.entries, ctx, self.name, key, "completion", completion,
                     policy.ttl_seconds, self.rules.limits)


async def read_stored(entries: CacheEntries, ctx: Context, stage: str, namespace: str,
                      keys: list[str], field: str) -> tuple[dict[str, Any], int] | None:
    """The answer stored under the first of `keys` that has one (its `field`) and its age
    in seconds, marked as used; None with the miss recorded (an unreadable entry is
    dropped)."""
    value, key = None, keys[0]
    try:
        for key in keys:
            value = await entries.get(namespace, key)
            if value is not None:
                break
    except StoreError as exc:
        ctx.decide(stage, "miss", f"store unavailable: {exc}", key=key[:16])
        return None
    if value is None:
        ctx.decide(stage, "miss", "no stored answer for this request", key=keys[0][:16])
        return None
    try:
        entry = orjson.loads(value)
        age = max(0, int(time.time() - entry["stored_at"]))
        stored = dict(entry[field])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        ctx.decide(stage, "miss", "unreadable stored entry (dropped)", key=key[:16])
        entries.delete(namespace, key)
        return None
    ctx.decide(stage, "hit", f"stored {age}s ago", key=key[:16], age=age)
    if not ctx.dry_run:
        entries.touch(namespace, key)
    return stored, age


def write_stored(entries: CacheEntries, ctx: Context, stage: str, key: str, field: str,
                 answer: dict[str, Any], ttl_seconds: float, limits: SizeLimits) -> None:
    """Queue `answer` under `key` in the caller's namespace (decision recorded): not when
    larger than the namespace's max_bytes, nor when the write queue is full."""
    value = orjson.dumps({field: answer, "stored_at": time.time()})
    if limits.max_bytes is not None and len(value) > limits.max_bytes:
        ctx.decide(stage, "not_stored", "answer larger than max_bytes")
    elif entries.put(ctx.tenant.namespace, key, value, ttl_seconds, limits):
        ctx.decide(stage, "store", f"for {ttl_seconds:g}s", key=key[:16])
    else:
        ctx.decide(stage, "not_stored", "write queue full")


def marked(reply: Reply, outcome: str) -> Reply:
    """Say what the exact cache did (`x-proxy-cache`), unless a later cache said more."""
    reply.headers.setdefault(HEADER, outcome)
    return reply


def _json_or_none(reply: Reply) -> Any:
    try:
        return reply.json()
    except orjson.JSONDecodeError:
        return None


def build(rules: Rules, resources: Resources) -> ExactCache:
    """The stage; its entries (and their writer) are kept across reloads."""
    policies = (rules.default, *(o.policy for o in rules.overrides))
    needs_analyzer = any(p.share == "standalone" and not p.per_user for p in policies)
    return ExactCache(rules, exact_entries(resources),
                      analyzer_of(resources) if needs_analyzer else None)


def exact_entries(resources: Resources) -> CacheEntries:
    """The process's exact-cache entries (created on first use)."""
    return resources.kept.setdefault(ENTRIES, lambda: CacheEntries(resources.kv, "exact"))
