"""Batches over chat completions, taken in by the proxy: created, retrieved, cancelled,
and their files served.

Creating one reads the input file from the upstream, checks every line (as a chat request
of the key: its model allowed), answers the lines the free stages can (each gets a ledger
row: the stage that answered, what it saved at the batch price), uploads the other lines
as a new input file and creates the upstream batch over them (none when every line was
answered). The batch's upstream usage is billed once, at the batch price, by the first
retrieve that sees it finished.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from aiohttp import web

from proxy.accounting import batch_line_entry
from proxy.api.validate import validate_chat_request
from proxy.auth import Tenant
from proxy.batches.lines import PARAM, InputLine, answered_line, jsonl, merge_output, parse_input
from proxy.batches.lookup import free_answer
from proxy.batches.store import OUTPUT, BatchRecord, BatchStore
from proxy.batches.upstream import UpstreamBatches
from proxy.batches.view import answered_batch, merged_batch
from proxy.errors import InvalidRequest, ProxyError
from proxy.pipeline.core import Bill, Context, Pipeline
from proxy.pipeline.passthrough_usage import bill_for, usage_of
from proxy.resources import Resources

CHAT_ENDPOINT = "/v1/chat/completions"
LOOKUPS_AT_ONCE = 16  # lines looked up concurrently (the embedder batches them)
SOURCE = "batch"  # the ledger source of a line the proxy answered


def _check_line(line: InputLine, tenant: Tenant) -> None:
    """The line's body as a chat request of this key; errors name the line."""
    try:
        validate_chat_request(line.body)
        tenant.require_model(line.body["model"])
    except ProxyError as exc:
        raise type(exc)(f"Line {line.number} of the input file: {exc.message}", param=PARAM,
                        code=exc.code) from None


class BatchIntake:
    """The proxy's side of batches over chat completions, for one application."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.store = BatchStore(resources.kv)
        self.upstream = UpstreamBatches(resources.upstream)

    async def create(self, ctx: Context, chain: Pipeline) -> dict[str, Any]:
        """Take in the batch `ctx.body` asks for; the batch object."""
        file_id = ctx.body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise InvalidRequest("Missing required parameter: 'input_file_id'.", param=PARAM)
        lines = parse_input(await self.upstream.file_content(file_id), CHAT_ENDPOINT)
        for line in lines:
            _check_line(line, ctx.tenant)
        answered = await self._answer(ctx, chain, lines)
        record = BatchRecord(
            id="batch_" + secrets.token_hex(12), created_at=int(time.time()),
            endpoint=CHAT_ENDPOINT, input_file_id=file_id,
            completion_window=str(ctx.body.get("completion_window") or "24h"),
            metadata=ctx.body.get("metadata"), model=str(lines[0].body["model"]),
            order=[line.custom_id for line in lines], answered=answered)
        rest = [line.raw for line in lines if line.custom_id not in answered]
        upstream = None
        if rest:
            sent = await self.upstream.upload_batch_input(f"{record.id}_input.jsonl", jsonl(rest))
            upstream = await self.upstream.create_batch({**ctx.body, "input_file_id": sent})
            record.upstream_id = str(upstream["id"])
        ctx.decide(SOURCE, "answered", f"{len(answered)} of {len(lines)} lines without upstream",
                   batch=record.id, upstream_batch=record.upstream_id)
        await self.store.save(ctx.tenant.name, record)
        return merged_batch(record, upstream) if upstream else answered_batch(record)

    async def _answer(self, ctx: Context, chain: Pipeline,
                      lines: list[InputLine]) -> dict[str, dict[str, Any]]:
        """The output lines of the requests the free stages answered, by custom_id."""
        gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)
        answered: dict[str, dict[str, Any]] = {}

        async def look_up(line: InputLine) -> None:
            line_ctx = Context(request_id=f"{ctx.request_id}.{line.number}", tenant=ctx.tenant,
                               body=dict(line.body), headers=ctx.headers, source=SOURCE)
            async with gate:
                reply = await free_answer(chain, line_ctx)
            if reply is None:
                return
            answered[line.custom_id] = answered_line(line.custom_id, line_ctx.request_id,
                                                     reply.json())
            self.resources.ledger.record(batch_line_entry(line_ctx, reply,
                                                           self.resources.prices))

        await asyncio.gather(*(look_up(line) for line in lines))
        return answered

    async def retrieve(self, ctx: Context, record: BatchRecord) -> tuple[dict[str, Any],
                                                                          Bill | None]:
        """The batch object now, and what the upstream batch is billed (only the first
        time it is seen finished)."""
        if record.upstream_id is None:
            return answered_batch(record), None
        upstream = await self.upstream.batch(record.upstream_id)
        bill = await bill_for(ctx, upstream, usage_of(upstream.get("usage")),
                              self.resources.prices, self.resources.limits)
        return merged_batch(record, upstream), bill

    async def cancel(self, record: BatchRecord) -> dict[str, Any]:
        """Cancel the upstream part (a batch the proxy answered whole stays completed)."""
        if record.upstream_id is None:
            return answered_batch(record)
        return merged_batch(record, await self.upstream.cancel(record.upstream_id))

    async def file_content(self, record: BatchRecord, kind: str) -> bytes:
        """The batch's output file (the proxy's answers and the upstream's merged in input
        order) or its error file (the upstream's)."""
        upstream_file = None
        if record.upstream_id is not None:
            upstream = await self.upstream.batch(record.upstream_id)
            upstream_file = upstream.get("output_file_id" if kind == OUTPUT else "error_file_id")
        data = await self.upstream.file_content(upstream_file) if upstream_file else b""
        return merge_output(record.order, record.answered, data) if kind == OUTPUT else data


BATCHES = web.AppKey("batches", BatchIntake)
