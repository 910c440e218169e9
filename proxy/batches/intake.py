"""Batches over chat completions and Responses, taken in by the proxy: created, retrieved,
cancelled, and their files served.

Creating one reads the input file from the upstream, checks every line (as a request of
the key to the batch's endpoint: its model allowed) and runs each through the pipeline's
free and shaping stages (proxy/batches/lookup.py). The lines a free stage answered get a
ledger row each (the stage that answered, what it saved at the batch price). The others
are grouped by the model they were routed to, and each group is uploaded as a new input
file with one upstream batch over it (none when every line was answered): an upstream
batch runs one model. The upstream usage is billed at the batch price, each upstream
batch once, by the first retrieve that sees it finished.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from proxy.accounting import batch_line_entry
from proxy.auth import Tenant
from proxy.batches.kinds import KINDS, LineKind
from proxy.batches.lines import (
    PARAM,
    InputLine,
    answered_line,
    group_by_model,
    jsonl,
    merge_output,
    parse_input,
    with_body,
)
from proxy.batches.lookup import free_answer
from proxy.batches.store import OUTPUT, BatchRecord, BatchStore
from proxy.batches.upstream import UpstreamBatches
from proxy.batches.view import answered_batch, combined_upstream, merged_batch
from proxy.errors import InvalidRequest, ProxyError
from proxy.pipeline.core import Bill, Context, Pipeline
from proxy.pipeline.passthrough.usage import bill_for, total_bill, usage_of
from proxy.resources import Resources

LOOKUPS_AT_ONCE = 16  # lines looked up concurrently (the embedder batches them)
SOURCE = "batch"  # the ledger source of a line the proxy answered
ROUTING = "batch_route"  # the trace entry on how the upstream lines were grouped


def _check_line(kind: LineKind, line: InputLine, tenant: Tenant) -> None:
    """The line's body as a request of this key to the batch's endpoint; errors name the
    line."""
    try:
        kind.check(line.body)
        tenant.require_model(line.body["model"])
    except ProxyError as exc:
        raise type(exc)(f"Line {line.number} of the input file: {exc.message}", param=PARAM,
                        code=exc.code) from None


@dataclass(slots=True)
class SortedLines:
    """The lines of one batch after the stages: answered, or to go upstream."""

    answered: dict[str, dict[str, Any]] = field(default_factory=dict)  # custom_id -> output
    outgoing: list[tuple[str, bytes]] = field(default_factory=list)  # (model, line), in order
    rerouted: int = 0  # lines routing sent to another model than they named
    edited: int = 0  # lines whose body the stages changed (re-serialized)


def _joined(files: list[bytes]) -> bytes:
    """JSONL files one after the other."""
    return jsonl(raw for data in files for raw in data.splitlines() if raw.strip())


class BatchIntake:
    """The proxy's side of batches over chat completions and Responses, for one
    application."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.store = BatchStore(resources.kv)
        self.upstream = UpstreamBatches(resources.upstream)

    async def create(self, ctx: Context, chain: Pipeline) -> dict[str, Any]:
        """Take in the batch `ctx.body` asks for (its endpoint one of KINDS); the batch
        object."""
        file_id = ctx.body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise InvalidRequest("Missing required parameter: 'input_file_id'.", param=PARAM)
        kind = KINDS[str(ctx.body.get("endpoint"))]
        lines = parse_input(await self.upstream.file_content(file_id), kind.endpoint)
        for line in lines:
            _check_line(kind, line, ctx.tenant)
        done = await self._sort(ctx, chain, kind, lines)
        record = BatchRecord(
            id="batch_" + secrets.token_hex(12), created_at=int(time.time()),
            endpoint=kind.endpoint, input_file_id=file_id,
            completion_window=str(ctx.body.get("completion_window") or "24h"),
            metadata=ctx.body.get("metadata"), model=str(lines[0].body["model"]),
            order=[line.custom_id for line in lines], answered=done.answered)
        groups = group_by_model(done.outgoing)
        parts = await self._submit(ctx, record, groups)
        ctx.decide(SOURCE, "answered", f"{len(done.answered)} of {len(lines)} lines without "
                   "upstream", batch=record.id, upstream_batches=record.upstream_ids)
        ctx.decide(ROUTING, "grouped", f"{len(done.outgoing)} lines in {len(groups)} upstream "
                   "batches, one per model", models={m: len(g) for m, g in groups.items()},
                   rerouted=done.rerouted, edited=done.edited)
        await self.store.save(ctx.tenant.name, record)
        return merged_batch(record, combined_upstream(parts)) if parts else answered_batch(record)

    async def _sort(self, ctx: Context, chain: Pipeline, kind: LineKind,
                    lines: list[InputLine]) -> SortedLines:
        """Run every line through the free and shaping stages: answered or outgoing."""
        gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)
        done = SortedLines()

        async def look_up(line: InputLine) -> tuple[str, bytes] | None:
            chat = kind.to_chat(line.body)
            if chat is None:
                return str(line.body["model"]), line.raw
            encoded = orjson.dumps(chat)
            line_ctx = Context(request_id=f"{ctx.request_id}.{line.number}", tenant=ctx.tenant,
                               body=chat, raw=encoded, headers=ctx.headers, source=SOURCE)
            async with gate:
                reply = await free_answer(chain, line_ctx)
            if reply is not None:
                done.answered[line.custom_id] = answered_line(
                    line.custom_id, line_ctx.request_id, kind.answer(line.body, reply.json()))
                self.resources.ledger.record(batch_line_entry(line_ctx, reply,
                                                               self.resources.prices))
                return None
            if not kind.shaped or line_ctx.raw is encoded:
                return str(line.body["model"]), line.raw
            done.edited += 1
            done.rerouted += line_ctx.model != line_ctx.requested_model
            return line_ctx.model, with_body(line, line_ctx.body)

        sent = await asyncio.gather(*(look_up(line) for line in lines))
        done.outgoing = [one for one in sent if one is not None]
        return done

    async def _submit(self, ctx: Context, record: BatchRecord,
                      groups: dict[str, list[bytes]]) -> list[dict[str, Any]]:
        """One upstream batch per model group; if one cannot be created, the ones already
        created are cancelled and the error goes to the client."""
        parts: list[dict[str, Any]] = []
        try:
            for number, lines in enumerate(groups.values(), start=1):
                sent = await self.upstream.upload_batch_input(
                    f"{record.id}_{number}_input.jsonl", jsonl(lines))
                parts.append(await self.upstream.create_batch({**ctx.body,
                                                               "input_file_id": sent}))
        except Exception:
            await asyncio.gather(*(self.upstream.cancel(str(p["id"])) for p in parts),
                                 return_exceptions=True)
            raise
        record.upstream_ids = [str(part["id"]) for part in parts]
        return parts

    async def _parts(self, record: BatchRecord) -> list[dict[str, Any]]:
        """The upstream batches as they are now."""
        return list(await asyncio.gather(*(self.upstream.batch(i) for i in record.upstream_ids)))

    async def retrieve(self, ctx: Context, record: BatchRecord) -> tuple[dict[str, Any],
                                                                          Bill | None]:
        """The batch object now, and what its upstream batches are billed (each only the
        first time it is seen finished)."""
        if not record.upstream_ids:
            return answered_batch(record), None
        parts = await self._parts(record)
        bills = [await bill_for(ctx, part, usage_of(part.get("usage")), self.resources.prices,
                                self.resources.limits) for part in parts]
        return merged_batch(record, combined_upstream(parts)), total_bill(bills)

    async def cancel(self, record: BatchRecord) -> dict[str, Any]:
        """Cancel every upstream part (a batch the proxy answered whole stays completed)."""
        if not record.upstream_ids:
            return answered_batch(record)
        parts = await asyncio.gather(*(self.upstream.cancel(i) for i in record.upstream_ids))
        return merged_batch(record, combined_upstream(list(parts)))

    async def file_content(self, record: BatchRecord, kind: str) -> bytes:
        """The batch's output file (the proxy's answers and the upstream parts' merged in
        input order) or its error file (the upstream parts' one after the other)."""
        key = "output_file_id" if kind == OUTPUT else "error_file_id"
        files = [part[key] for part in await self._parts(record) if part.get(key)]
        data = _joined(list(await asyncio.gather(*(self.upstream.file_content(str(f))
                                                   for f in files))))
        return merge_output(record.order, record.answered, data) if kind == OUTPUT else data


BATCHES = web.AppKey("batches", BatchIntake)
