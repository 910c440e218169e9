"""`POST /v1/chat/completions`: body -> Context -> pipeline -> JSON or SSE response."""

from __future__ import annotations

import logging

from aiohttp import web

from proxy.api.streaming import send_stream
from proxy.api.validate import parse_json_object, validate_chat_request
from proxy.app_keys import PIPELINE, SERVICES, request_id, tenant_of
from proxy.pipeline.core import Context, Reply
from proxy.pipeline.dispatch import dispatch, record

log = logging.getLogger("proxy.chat")


def reply_headers(ctx: Context, reply: Reply) -> dict[str, str]:
    """Response headers: upstream's passed ones plus the proxy's x-proxy-* view."""
    headers = dict(reply.headers)
    headers["x-request-id"] = ctx.request_id
    headers["x-proxy-request-id"] = ctx.request_id
    headers["x-proxy-stage"] = reply.stage
    headers["x-proxy-model"] = reply.model or ctx.model
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
    """Answer a chat completion through the pipeline."""
    ctx = build_context(request, await request.read())
    reply = await dispatch(request.app[PIPELINE].current, ctx, request.app[SERVICES])
    if not reply.is_stream:
        return web.Response(status=reply.status, body=reply.body,
                            headers=reply_headers(ctx, reply),
                            content_type=None if "Content-Type" in reply.headers
                            else "application/json")
    return await _stream(request, ctx, reply)


async def _stream(request: web.Request, ctx: Context, reply: Reply) -> web.StreamResponse:
    services = request.app[SERVICES]
    headers = reply_headers(ctx, reply)
    headers.update({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    assert reply.chunks is not None
    return await send_stream(request, web.StreamResponse(status=reply.status, headers=headers),
                             reply.chunks,
                             lambda status: record(services, ctx, reply, status=status))
