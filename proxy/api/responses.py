"""`/v1/responses`: create (JSON or typed SSE events), retrieve, delete, list input items.

A create request is translated to a chat completions body (proxy/responses/)
and sent through the same pipeline as /v1/chat/completions, with ledger rows of
source "responses" and the same x-proxy-* headers; the chat answer, or its
chunks as they pass, is translated back. Responses are stored per key unless
`store` is false.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from proxy.api.body import read_body
from proxy.api.chat import reply_headers
from proxy.api.passthrough import forward
from proxy.api.request_keys import request_id, tenant_of
from proxy.api.validate import parse_json_object
from proxy.batches.defer import cannot_defer, wants_deferral
from proxy.batches.kinds import RESPONSES_ENDPOINT
from proxy.batches.window import DEFERRED, DEFERRED_QUEUE
from proxy.errors import InvalidRequest, NotFound
from proxy.pipeline.core import Context, Reply
from proxy.pipeline.dispatch import dispatch
from proxy.pipeline.drain import stream_reply
from proxy.pipeline.registry import PIPELINE
from proxy.resources import RESOURCES
from proxy.responses.store import RESPONSES, Chain, ResponseStore, StoredResponse
from proxy.responses.stream import Event, ResponseEvents, frame
from proxy.responses.translate import ResponseShell, Turn, translate_request
from proxy.responses.upstream_state import upstream_need
from proxy.responses.validate import validate_request
from proxy.store.kv import StoreError
from proxy.threads.params import list_query
from proxy.upstream.sse import split_events

log = logging.getLogger("proxy.responses")
SOURCE = "responses"


def _store(request: web.Request) -> ResponseStore:
    return request.app[RESPONSES]


def _json(obj: Any, request: web.Request, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json",
                        headers=headers or {"x-request-id": request_id(request)})


async def _chain(store: ResponseStore, owner: str, body: dict[str, Any]) -> Chain:
    previous = body.get("previous_response_id")
    if not previous:
        return Chain()
    chain = await store.chain(owner, previous)
    if chain is None:
        raise InvalidRequest(f"Previous response with id '{previous}' not found.",
                             param="previous_response_id", code="previous_response_not_found")
    return chain


async def create_response(request: web.Request) -> web.StreamResponse:
    """Answer a Responses request through the pipeline."""
    raw = await read_body(request)
    body = parse_json_object(raw)
    tenant = tenant_of(request)
    deferred = wants_deferral(request.headers, tenant, body)
    if (need := upstream_need(body)) is not None:
        if deferred:
            raise cannot_defer(f"this request cannot be deferred: {need.reason}.")
        # hosted tools, background, conversations...: the upstream's own state serves it;
        # forwarded as it came (still authenticated, limited, priced and recorded)
        return await forward(request, raw)
    validate_request(body)
    tenant.require_model(body["model"])
    store = _store(request)
    chain = await _chain(store, tenant.name, body)
    turn = translate_request(body, chain.items)
    ctx = Context(request_id=request_id(request), tenant=tenant, body=turn.chat,
                  headers=request.headers, source=SOURCE)
    ctx.prior_summary = chain.summary
    shell = ResponseShell(model=ctx.requested_model, echo=turn.echo)
    pipeline = request.app[PIPELINE].current
    if deferred:
        pipeline = request.app[DEFERRED_QUEUE].chain(pipeline, RESPONSES_ENDPOINT, body)
    reply = await dispatch(pipeline, ctx, request.app[RESOURCES])
    if reply.stage == DEFERRED:  # queued: the proxy.deferred object, 202
        return web.Response(status=reply.status, body=reply.body,
                            headers=reply_headers(ctx, reply))
    shell.model = reply.model or shell.model
    saver = _Saver(store, tenant.name, turn, ctx, chain)
    if not reply.ok or not reply.is_stream:
        return await _whole(request, ctx, reply, shell, saver)
    return await _stream(request, ctx, reply, shell, saver)


class _Saver:
    """Stores the finished Response (when `store`) with its input and the latest summary."""

    def __init__(self, store: ResponseStore, owner: str, turn: Turn, ctx: Context,
                 chain: Chain) -> None:
        self.store, self.owner, self.turn, self.ctx, self.chain = store, owner, turn, ctx, chain

    async def save(self, response: dict[str, Any]) -> None:
        """Store it; a failing store is logged, the answer (already paid for) still goes out."""
        if not self.turn.store:
            return
        summary = self.ctx.new_summary or self.chain.summary
        try:
            await self.store.save(self.owner, StoredResponse(response, self.turn.input_items,
                                                             summary))
        except StoreError as exc:
            log.error("response %s (request %s) was not stored: %s", response["id"],
                      self.ctx.request_id, exc)


async def _whole(request: web.Request, ctx: Context, reply: Reply, shell: ResponseShell,
                 saver: _Saver) -> web.Response:
    headers = reply_headers(ctx, reply)
    if not reply.ok:  # errors keep their status and body, as for chat completions
        return web.Response(status=reply.status, body=reply.body, headers=headers,
                            content_type=None if "Content-Type" in reply.headers
                            else "application/json")
    headers.pop("Content-Type", None)
    headers.pop("Content-Length", None)
    response = shell.from_completion(reply.json())
    await saver.save(response)
    return _json(response, request, headers)


async def _write(resp: web.StreamResponse, events: list[Event]) -> None:
    if events:
        await resp.write(b"".join(frame(e) for e in events))


async def _stream(request: web.Request, ctx: Context, reply: Reply, shell: ResponseShell,
                  saver: _Saver) -> web.StreamResponse:
    """Translate the chat stream event by event; store the Response before its last event."""
    headers = reply_headers(ctx, reply)
    headers.pop("Content-Length", None)
    headers.update({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    resp = web.StreamResponse(status=reply.status, headers=headers)
    events = ResponseEvents(shell)
    chunks = reply.chunks
    assert chunks is not None

    async def send() -> None:
        await resp.prepare(request)
        await _write(resp, events.start())
        rest = b""
        async for piece in chunks:
            complete, rest = split_events(rest + piece)
            for raw in complete:
                await _write(resp, events.feed_event(raw))
        closing, final = events.finish(reply.error)
        await _write(resp, closing)
        await saver.save(final["response"])
        await _write(resp, [final])
        await resp.write_eof()

    await stream_reply(request.app[RESOURCES], ctx, reply, send)
    return resp


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.")


async def retrieve_response(request: web.Request) -> web.Response:
    """`GET /v1/responses/{response_id}`."""
    response_id = request.match_info["response_id"]
    stored = await _store(request).get(tenant_of(request).name, response_id)
    if stored is None:
        raise _not_found(response_id)
    return _json(stored.response, request)


async def delete_response(request: web.Request) -> web.Response:
    """`DELETE /v1/responses/{response_id}`."""
    response_id = request.match_info["response_id"]
    if not await _store(request).delete(tenant_of(request).name, response_id):
        raise _not_found(response_id)
    return _json({"id": response_id, "object": "response", "deleted": True}, request)


def item_page(items: list[dict[str, Any]], query: dict[str, Any]) -> dict[str, Any]:
    """One page of items as OpenAI's list object (`limit`, `order`, `after` cursor)."""
    ordered = items if query["order"] == "asc" else items[::-1]
    start = 0
    if query["after"] is not None:
        ids = [item["id"] for item in ordered]
        if query["after"] not in ids:
            raise InvalidRequest(f"Invalid 'after': no input item with id '{query['after']}'.",
                                 param="after", code="invalid_value")
        start = ids.index(query["after"]) + 1
    data = ordered[start:start + query["limit"]]
    return {"object": "list", "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": start + len(data) < len(ordered)}


async def list_input_items(request: web.Request) -> web.Response:
    """`GET /v1/responses/{response_id}/input_items`: the items that request sent itself."""
    response_id = request.match_info["response_id"]
    query = list_query(request.query)
    stored = await _store(request).get(tenant_of(request).name, response_id)
    if stored is None:
        raise _not_found(response_id)
    return _json(item_page(stored.input_items, query), request)


def add_routes(app: web.Application) -> None:
    """Register the Responses API routes."""
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id}", retrieve_response)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", list_input_items)
