"""Requests deferred with `x-proxy-defer: batch`: queued, submitted in batch windows, and
looked up.

A deferred request meets the pipeline's admission stage and its free stages (pattern
replies, the caches): answered there, it gets its normal 200 at once. Otherwise it is
queued in the KV store and answered 202 with a `proxy.deferred` object. Every
`[batches] window_seconds` one worker (a marker in the limit store per window) submits
each key's queued requests, per endpoint and at most `max_lines` at a time, as a batch
through the batch intake, under the key's own identity: the lines meet the free stages
again (a cache filled meanwhile answers them), are routed and stripped, and the rest
goes upstream at the batch price. `status` follows the batch and, once it finished,
gives the request's output line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from itertools import groupby
from typing import Any

import orjson
from aiohttp import web

from proxy.auth import Tenant
from proxy.batches.deferred import DeferredRecord, DeferredStore
from proxy.batches.intake import BatchIntake
from proxy.batches.lines import find_line, jsonl
from proxy.batches.lookup import FREE_STAGES, chain_of, free_chain
from proxy.batches.store import ERRORS, OUTPUT
from proxy.pipeline.core import Bill, Context, Next, Pipeline, Reply
from proxy.pipeline.passthrough.usage import BATCH_FINISHED
from proxy.pipeline.registry import PipelineHolder
from proxy.resources import Resources

log = logging.getLogger("proxy.batches")
DEFERRED = "deferred"  # the stage name of a queued request's reply
DEFER_STAGES = FREE_STAGES | {"admission"}


class DeferredQueue:
    """Queues deferred requests and submits them as batches, for one worker."""

    def __init__(self, resources: Resources, intake: BatchIntake,
                 pipeline: PipelineHolder) -> None:
        self.resources, self.intake, self.pipeline = resources, intake, pipeline
        self.store = DeferredStore(resources.kv)
        self.config = resources.config.batches
        self._task: asyncio.Task[None] | None = None

    def chain(self, pipeline: Pipeline, endpoint: str, body: dict[str, Any]) -> Pipeline:
        """The chain a deferred request goes through: admission and the free stages, then
        the queue (`body` is what the client sent to `endpoint`)."""
        return chain_of(pipeline, DEFER_STAGES, self._queue(endpoint, body))

    def _queue(self, endpoint: str, body: dict[str, Any]) -> Next:
        async def queue(ctx: Context) -> Reply:
            record = DeferredRecord(id="deferred_" + secrets.token_hex(12),
                                    owner=ctx.tenant.name, created_at=int(time.time()),
                                    endpoint=endpoint, body=body)
            await self.store.save(record)
            ctx.decide(DEFERRED, "queued", "no free answer: queued for the next batch window",
                       deferred=record.id)
            return Reply(status=202, body=orjson.dumps(record.view("queued")),
                         headers={"Content-Type": "application/json"}, stage=DEFERRED,
                         model=ctx.model, completed=True)
        return queue

    async def flush(self) -> int:
        """Submit every key's queued requests; the number of batches created."""
        created = 0
        records = sorted(await self.store.queued(), key=lambda r: (r.owner, r.endpoint))
        for (owner, endpoint), group in groupby(records, key=lambda r: (r.owner, r.endpoint)):
            tenant = next((t for t in self.resources.keys.tenants() if t.name == owner), None)
            if tenant is None:
                log.warning("deferred requests of %r stay queued: the key is unknown", owner)
                continue
            waiting = list(group)
            for start in range(0, len(waiting), self.config.max_lines):
                await self._submit(tenant, endpoint, waiting[start:start + self.config.max_lines])
                created += 1
        return created

    async def _submit(self, tenant: Tenant, endpoint: str, records: list[DeferredRecord]) -> None:
        data = jsonl(orjson.dumps({"custom_id": r.id, "method": "POST", "url": endpoint,
                                   "body": r.body}) for r in records)
        file_id = await self.intake.upstream.upload_batch_input("deferred.jsonl", data)
        ctx = Context(request_id="deferred_batch_" + secrets.token_hex(8), tenant=tenant,
                      body={"input_file_id": file_id, "endpoint": endpoint,
                            "completion_window": "24h"}, source=DEFERRED)
        batch = await self.intake.create(ctx, free_chain(self.pipeline.current))
        for record in records:
            record.batch_id = str(batch["id"])
            await self.store.save(record)

    async def status(self, ctx: Context, record: DeferredRecord) -> tuple[dict[str, Any],
                                                                         Bill | None]:
        """The `proxy.deferred` object now, and what its batch is billed (see
        BatchIntake.retrieve)."""
        found = (await self.intake.store.batch(record.owner, record.batch_id)
                 if record.batch_id else None)
        if found is None:
            return record.view("queued"), None
        batch, bill = await self.intake.retrieve(ctx, found)
        if batch.get("status") not in BATCH_FINISHED:
            return record.view("in_progress"), bill
        line = find_line(await self.intake.file_content(found, OUTPUT), record.id)
        if line is None and found.upstream_ids:
            line = find_line(await self.intake.file_content(found, ERRORS), record.id)
        ok = line is not None and not line.get("error") and \
            (line.get("response") or {}).get("status_code") == 200
        if ok:
            status = "completed"
        elif line is not None or batch.get("status") == "completed":
            status = "failed"
        else:
            status = str(batch.get("status"))  # cancelled or expired before it ran
        return record.view(status, line), bill

    def start(self) -> None:
        """Submit queued requests every window from now on."""
        self._task = asyncio.get_running_loop().create_task(self._every_window())

    async def _every_window(self) -> None:
        window = self.config.window_seconds
        while True:
            await asyncio.sleep(window)
            slot = int(time.time() // window)
            try:
                if await self.resources.limits.claim(f"deferred-window:{slot}", window * 2):
                    await self.flush()
            except Exception:  # the next window tries again; the queue is kept
                log.exception("submitting deferred requests failed")

    async def aclose(self) -> None:
        """Stop submitting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


DEFERRED_QUEUE = web.AppKey("deferred_queue", DeferredQueue)
