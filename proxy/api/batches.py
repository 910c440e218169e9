"""`/v1/batches` over chat completions or Responses, and the files of those batches, served
by the proxy.

A batch created for `/v1/chat/completions` or `/v1/responses` is taken in by the proxy
(proxy/batches/): its free answers come from the pipeline's pattern and cache stages, only
the rest goes upstream (routed and stripped, one upstream batch per model). Such a batch,
and its output and error files, have the proxy's ids and are found in the key's own
store; every other batch or file id (batches for other endpoints, input files, another
key's ids) passes through to the upstream unchanged. Each request is still one
pass-through ledger row, through the pass-through chain (admission, budget).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.api.body import read_body
from proxy.api.passthrough import forward, run_passthrough
from proxy.api.request_keys import tenant_of
from proxy.batches.intake import BATCHES, SOURCE, BatchIntake
from proxy.batches.kinds import KINDS
from proxy.batches.lookup import free_chain
from proxy.batches.view import file_object
from proxy.batches.window import DEFERRED_QUEUE
from proxy.errors import NotFound
from proxy.pipeline.core import Bill, Context, Reply
from proxy.pipeline.registry import PIPELINE


def _intake(request: web.Request) -> BatchIntake:
    return request.app[BATCHES]


def _reply(body: bytes, content_type: str) -> Reply:
    return Reply(status=200, body=body, headers={"Content-Type": content_type}, stage=SOURCE,
                 completed=True)


def _json_reply(ctx: Context, document: dict[str, Any], bill: Bill | None = None) -> Reply:
    reply = _reply(orjson.dumps(document), "application/json")
    if bill is not None:
        ctx.passthrough_bill = bill
        reply.usage, reply.model = bill.usage, bill.model
    return reply


def _endpoint(raw: bytes) -> Any:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # upstream says what is wrong with it
    return body.get("endpoint") if isinstance(body, dict) else None


async def create_batch(request: web.Request) -> web.StreamResponse:
    """`POST /v1/batches`: over chat completions or Responses, the lines the proxy can answer are
    answered and only the rest is sent upstream; other endpoints pass through."""
    raw = await read_body(request)
    if _endpoint(raw) not in KINDS:
        return await forward(request, raw)
    intake, chain = _intake(request), free_chain(request.app[PIPELINE].current)

    async def send(ctx: Context) -> Reply:
        return _json_reply(ctx, await intake.create(ctx, chain))

    return await forward(request, raw, terminal=send)


async def retrieve_batch(request: web.Request) -> web.StreamResponse:
    """`GET /v1/batches/{batch_id}`: the proxy's batch with counts over every line."""
    intake = _intake(request)
    record = await intake.store.batch(tenant_of(request).name, request.match_info["batch_id"])
    if record is None:
        return await forward(request)

    async def send(ctx: Context) -> Reply:
        return _json_reply(ctx, *await intake.retrieve(ctx, record))

    return await forward(request, terminal=send)


async def cancel_batch(request: web.Request) -> web.StreamResponse:
    """`POST /v1/batches/{batch_id}/cancel`: cancels the upstream part of the proxy's batch."""
    intake = _intake(request)
    record = await intake.store.batch(tenant_of(request).name, request.match_info["batch_id"])
    if record is None:
        return await forward(request)

    async def send(ctx: Context) -> Reply:
        return _json_reply(ctx, await intake.cancel(record))

    return await forward(request, await request.read(), terminal=send)


async def _file(request: web.Request, *, content: bool) -> web.StreamResponse:
    intake = _intake(request)
    owner = tenant_of(request).name
    found = await intake.store.file(owner, request.match_info["file_id"])
    record = await intake.store.batch(owner, found.batch_id) if found is not None else None
    if found is None or record is None:
        return await forward(request)

    async def send(ctx: Context) -> Reply:
        data = await intake.file_content(record, found.kind)
        if content:
            return _reply(data, "application/octet-stream")
        return _json_reply(ctx, file_object(record, found.kind, len(data)))

    return await forward(request, terminal=send)


async def retrieve_file(request: web.Request) -> web.StreamResponse:
    """`GET /v1/files/{file_id}`: a proxy batch's output or error file object."""
    return await _file(request, content=False)


async def file_content(request: web.Request) -> web.StreamResponse:
    """`GET /v1/files/{file_id}/content`: a proxy batch's merged output (or error) file."""
    return await _file(request, content=True)


async def retrieve_deferred(request: web.Request) -> web.StreamResponse:
    """`GET /v1/proxy/deferred/{deferred_id}`: a request deferred with `x-proxy-defer:
    batch`, its status and, once its batch finished, its output line's response."""
    queue = request.app[DEFERRED_QUEUE]
    deferred_id = request.match_info["deferred_id"]
    record = await queue.store.get(tenant_of(request).name, deferred_id)
    if record is None:
        raise NotFound(f"No deferred request found with id '{deferred_id}'.")

    async def send(ctx: Context) -> Reply:
        return _json_reply(ctx, *await queue.status(ctx, record))

    return await run_passthrough(request, terminal=send)


def add_routes(app: web.Application) -> None:
    """Register the batch routes (before the pass-through catch-all)."""
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches/{batch_id}", retrieve_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    app.router.add_get("/v1/files/{file_id}", retrieve_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_get("/v1/proxy/deferred/{deferred_id}", retrieve_deferred)
