"""`POST /v1/chat/completions`: body -> Context -> pipeline -> JSON or SSE response."""

from __future__ import annotations

import logging

from aiohttp import web

from proxy.api.body import read_body
from proxy.api.request_keys import request_id, tenant_of
from proxy.api.validate import parse_json_object, validate_chat_request
from proxy.batches.defer import wants_deferral
from proxy.batches.kinds import CHAT_ENDPOINT
from proxy.batches.window import DEFERRED_QUEUE
from proxy.pipeline.core import Context, Reply
from proxy.pipeline.dispatch import dispatch
from proxy.pipeline.drain import stream_reply
from proxy.pipeline.registry import PIPELINE
from proxy.resources import RESOURCES

log = logging.getLogger("proxy.chat")


def reply_headers(ctx: Context, reply: Reply) -> dict[str, str]:
    """Response headers: upstream's passed ones plus the proxy's x-proxy-* view."""
    headers = dict(reply.headers)
    headers["x-request-id"] = ctx.request_id
    headers["x-proxy-request-id"] = ctx.request_id
    headers["x-proxy-stage"] = reply.stage
    headers["x-proxy-model"] = reply.model or ctx.model
    route = next((d for d in reversed(ctx.trace)
                  if d.stage == "route" and d.action != "shadow"), None)
    if route is not None:
        margin = route.data.get("margin")
        name = str(route.data.get("rule") or route.action).encode("ascii", "replace").decode()
        headers["x-proxy-route"] = name + (f"; margin={margin:.3f}" if margin is not None
                                           else "")
    return headers


def build_context(request: web.Request, raw: bytes) -> Context:
    """Parse and validate the body into a Context for the requesting tenant."""
    tenant = tenant_of(request)
    body = parse_json_object(raw)
    validate_chat_request(body)
    tenant.require_model(body["model"])
    return Context(request_id=request_id(request), tenant=tenant, body=body, raw=raw,
                   headers=request.headers)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Answer a chat completion through the pipeline (deferred: answered by a free stage
    or queued for a batch, see proxy/batches/window.py)."""
    ctx = build_context(request, await read_body(request))
    pipeline = request.app[PIPELINE].current
    if wants_deferral(request.headers, ctx.tenant, ctx.client_body):
        pipeline = request.app[DEFERRED_QUEUE].chain(pipeline, CHAT_ENDPOINT, ctx.client_body)
    reply = await dispatch(pipeline, ctx, request.app[RESOURCES])
    if not reply.is_stream:
        return web.Response(status=reply.status, body=reply.body,
                            headers=reply_headers(ctx, reply),
                            content_type=None if "Content-Type" in reply.headers
                            else "application/json")
    return await _stream(request, ctx, reply)


async def _stream(request: web.Request, ctx: Context, reply: Reply) -> web.StreamResponse:
    resources = request.app[RESOURCES]
    headers = reply_headers(ctx, reply)
    headers.update({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    resp = web.StreamResponse(status=reply.status, headers=headers)
    chunks = reply.chunks
    assert chunks is not None

    async def send() -> None:
        await resp.prepare(request)
        async for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()

    await stream_reply(resources, ctx, reply, send)
    return resp
