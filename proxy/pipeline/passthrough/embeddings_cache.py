"""Embeddings in the exact cache: the same input again, for the same key namespace, is free.

Used for `POST /v1/embeddings` when the pipeline has the `exact_cache` stage, with
that stage's rules (`enabled`, `ttl_seconds` and `per_user` per model and key, size
bounds) and its entries (one KV namespace per tenant namespace, written behind the
response), so purging a namespace purges its embeddings too. The key is the exact
cache's request key of the body under endpoint "embeddings" (so it never meets a chat
entry): model, input, dimensions, encoding_format and any other field, the caller's
identity (`user`) only with `per_user`. Stored: complete 200 answers that were read
whole and carry usage. A hit answers the stored JSON, its usage recorded as saved,
with `x-proxy-cache: hit-exact` and `x-proxy-cache-age`; the `x-proxy-cache` request
directives work as for chat.
"""

from __future__ import annotations

import orjson

from proxy.pipeline.cache_control import HEADER, CacheDirectives
from proxy.pipeline.core import Context, Next, Reply
from proxy.pipeline.passthrough.usage import usage_of
from proxy.pipeline.stages.exact_cache import (
    NAME,
    Policy,
    Rules,
    marked,
    read_stored,
    request_key,
    write_stored,
)
from proxy.pipeline.stream_end import call_when_stream_ends
from proxy.store.cache_entries import CacheEntries

ENDPOINT = "embeddings"


class EmbeddingsCache:
    """Answers a repeated embeddings request from the store; stores fresh answers."""

    name = NAME

    def __init__(self, rules: Rules, entries: CacheEntries) -> None:
        self.rules = rules
        self.entries = entries

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        policy = self.rules.policy_for(ctx.requested_model, ctx.tenant.name)
        if not policy.enabled:
            ctx.decide(self.name, "skip", "disabled by rule")
            return marked(await call_next(ctx), "bypass")
        directives = CacheDirectives.from_headers(ctx.headers)
        namespace = ctx.tenant.namespace
        key = request_key(ctx.body, namespace, ctx.requested_model, policy.per_user,
                          endpoint=ENDPOINT)
        if directives.refresh:
            self.entries.delete(namespace, key)
        if directives.read:
            hit = await self._lookup(ctx, namespace, key)
            if hit is not None:
                return hit
        else:
            ctx.decide(self.name, "bypass", f"{HEADER}: {directives.raw}", key=key[:16])
        reply = marked(await call_next(ctx), "miss" if directives.read else "bypass")
        if directives.store and reply.chunks is not None:
            async def store() -> None:
                self._store(ctx, reply, key, policy)

            call_when_stream_ends(reply, store)
        return reply

    async def _lookup(self, ctx: Context, namespace: str, key: str) -> Reply | None:
        found = await read_stored(self.entries, ctx, self.name, namespace, [key], "embeddings")
        if found is None:
            return None
        answer, age = found
        saved = usage_of(answer.get("usage"))
        return Reply(status=200, body=orjson.dumps(answer), stage=self.name,
                     model=str(answer.get("model") or ctx.model), saved_usage=saved,
                     headers={"Content-Type": "application/json", HEADER: "hit-exact",
                              "x-proxy-cache-age": str(age)})

    def _store(self, ctx: Context, reply: Reply, key: str, policy: Policy) -> None:
        answer = ctx.passthrough_answer
        if reply.status != 200 or not reply.completed or reply.error:
            ctx.decide(self.name, "not_stored", f"not a complete answer (status {reply.status})")
            return
        if not isinstance(answer, dict) or usage_of(answer.get("usage")) is None:
            ctx.decide(self.name, "not_stored", "answer not read whole, or without usage")
            return
        write_stored(self.entries, ctx, self.name, key, "embeddings", answer,
                     policy.ttl_seconds, self.rules.limits)
