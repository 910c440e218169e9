"""Every `/v1/*` path the proxy does not serve itself, passed through to the upstream.

`forward` is the catch-all route, and other handlers may hand a request to it (with
the body when they already read it). The key was resolved by the auth middleware; a
JSON body that names a `model` must name one of the key's `allowed_models` (403 as
for chat). The request then goes through the pass-through chain (the pipeline's
admission, the exact cache for embeddings, the budget: proxy/pipeline/passthrough/chain.py)
to the upstream serving the body's model, or the first upstream when it names none.
JSON bodies are read (within `server.max_body_bytes`); any other body (file uploads,
audio) is streamed up as it arrives, and the answer comes back chunk by chunk with
upstream's status, headers and body. Each request is one ledger row with
`source = "passthrough"` and its method and path in the trace.

Paths under the proxy's own prefixes (its admin API, the assistants and threads it
serves itself) are never passed on: a path it does not know there is its own 404.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from proxy.accounting import passthrough_entry
from proxy.api.request_keys import request_id, tenant_of
from proxy.api.streaming import send_stream
from proxy.errors import NotFound, ProxyError
from proxy.pipeline.core import Context, Next, Reply
from proxy.pipeline.passthrough.chain import passthrough_chain
from proxy.pipeline.passthrough.usage import tap_usage
from proxy.pipeline.registry import PIPELINE
from proxy.resources import RESOURCES, Resources
from proxy.upstream import forward as upstream_forward
from proxy.upstream.terminal import timed

SOURCE = "passthrough"
OWN_PREFIXES = ("/v1/proxy", "/v1/assistants", "/v1/threads")


def _own_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OWN_PREFIXES)


async def _not_served(request: web.Request) -> Exception:
    """The proxy's answer to an own path it does not serve: 405 when another method is
    served there (as without the catch-all), else 404."""
    allowed: set[str] = set()
    catch_all = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not catch_all:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        return web.HTTPMethodNotAllowed(request.method, allowed)
    return NotFound(f"Unknown request URL: {request.method} {request.path}.")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # upstream says what is wrong with it
    return body if isinstance(body, dict) else None


async def _upload(request: web.Request) -> AsyncIterator[bytes]:
    async for data in request.content.iter_any():
        yield data


async def forward(request: web.Request, body: bytes | None = None,
                  terminal: Next | None = None) -> web.StreamResponse:
    """Pass the request through to the upstream and stream its answer back (or, with
    `terminal`, end the pass-through chain there instead: a handler that answers the
    request itself, still limited, budgeted and recorded as a pass-through)."""
    if _own_path(request.path):
        raise await _not_served(request)
    return await run_passthrough(request, body, terminal)


async def run_passthrough(request: web.Request, body: bytes | None = None,
                          terminal: Next | None = None) -> web.StreamResponse:
    """`forward` without the own-path check: also for the proxy's own paths whose answer
    is billed like a pass-through one (a deferred request's batch)."""
    resources = request.app[RESOURCES]
    is_json = request.content_type == "application/json"
    if body is None and is_json and request.body_exists:
        body = await request.read()
    document = _json_object(body) if is_json and body else None
    ctx = Context(request_id=request_id(request), tenant=tenant_of(request),
                  body=document or {}, headers=request.headers, source=SOURCE)
    ctx.decide(SOURCE, "forward", f"{request.method} {request.path}", method=request.method,
               path=request.path)
    upload = body if body is not None else _upload(request) if request.body_exists else None
    embeddings = (request.method == "POST" and request.path == "/v1/embeddings"
                  and document is not None)
    try:
        if document is not None and isinstance(document.get("model"), str):
            ctx.tenant.require_model(document["model"])
        chain = passthrough_chain(request.app[PIPELINE].current,
                                  terminal or _terminal(request, upload), embeddings=embeddings)
        reply = await chain(ctx)
    except ProxyError as exc:
        _record(resources, ctx, None, status=exc.status, error=exc.message)
        raise
    headers = {**reply.headers, "x-request-id": ctx.request_id,
               "x-proxy-request-id": ctx.request_id, "x-proxy-stage": reply.stage}
    if reply.chunks is None:  # answered by the proxy (a cache hit, a batch it took in)
        _record(resources, ctx, reply, status=reply.status)
        return web.Response(status=reply.status, body=reply.body, headers=headers)
    return await send_stream(request, web.StreamResponse(status=reply.status, headers=headers),
                             reply.chunks,
                             lambda status: _record(resources, ctx, reply, status=status),
                             broken=lambda: reply.error is not None)


def _terminal(request: web.Request, upload: upstream_forward.Body) -> Next:
    """The end of the chain: forward the request to the upstream that serves its model."""
    resources = request.app[RESOURCES]

    async def send(ctx: Context) -> Reply:
        client = resources.upstream
        upstream = client.upstream_for(ctx.model) if ctx.model else client.config.upstreams[0]
        ctx.decide("upstream", "forward", f"to {upstream.name}", upstream=upstream.name)
        started = time.perf_counter()
        try:
            reply = await upstream_forward.send(
                client, upstream, request.method, request.rel_url.raw_path,
                request.rel_url.raw_query_string, request.headers, upload)
        finally:
            ctx.upstream_ms = (time.perf_counter() - started) * 1000.0
        reply.model = ctx.model
        tap_usage(ctx, reply, resources.prices, resources.limits)
        assert reply.chunks is not None
        reply.chunks = timed(reply.chunks, ctx, started)
        return reply

    return send


def _record(resources: Resources, ctx: Context, reply: Reply | None, *, status: int,
            error: str | None = None) -> None:
    resources.ledger.record(passthrough_entry(ctx, reply, resources.prices,
                                             ctx.passthrough_bill, status=status, error=error))
