"""The threads service of one proxy process: store, records, runs and their tasks.

`Resources.threads`; `aclose()` at shutdown lets running turns
finish for a short grace period, then cancels the rest (their runs are marked
failed, so no client polls forever).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from proxy.auth import Tenant
from proxy.pipeline.registry import PipelineHolder
from proxy.resources import Resources
from proxy.store.threads_redis import RedisThreadStore
from proxy.store.threads_sqlite import SqliteThreadStore
from proxy.store.threads_store import ThreadStore
from proxy.threads.events import RunEvents
from proxy.threads.executor import RunTurn
from proxy.threads.records import Records
from proxy.threads.runs import Runs

log = logging.getLogger("proxy.threads")
SHUTDOWN_GRACE_SECONDS = 2.0


class ThreadsRuntime:
    """Everything the /v1/assistants and /v1/threads handlers call into."""

    def __init__(self, resources: Resources, pipeline: PipelineHolder, store: ThreadStore) -> None:
        self.resources = resources
        self.pipeline = pipeline
        self.store = store
        self.records = Records(store)
        self.runs = Runs(self)
        self.turns: dict[str, RunTurn] = {}
        self.closing = False

    @classmethod
    async def open(cls, resources: Resources, pipeline: PipelineHolder) -> ThreadsRuntime:
        """The runtime on the configured store."""
        return cls(resources, pipeline, await _open_store(resources))

    def start_turn(self, tenant: Tenant, run: dict[str, Any], events: RunEvents | None,
                   request_id: str, headers: Mapping[str, str]) -> None:
        """Execute the run's next turn in a background task."""
        turn = RunTurn(self, tenant, run, events, request_id, dict(headers))
        turn.task = asyncio.create_task(turn.execute(), name=f"run {run['id']}")
        self.turns[run["id"]] = turn
        turn.task.add_done_callback(lambda _: self.turns.pop(run["id"], None))

    def cancel_turn(self, run_id: str) -> None:
        """Cancel the run's turn if it executes in this process."""
        turn = self.turns.get(run_id)
        if turn is not None:
            turn.cancel()

    async def aclose(self) -> None:
        """Let running turns finish briefly, then cancel the rest and wait for them."""
        pending = [turn.task for turn in self.turns.values() if turn.task is not None]
        if pending:
            _, still = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_SECONDS)
            self.closing = True
            for task in still:
                task.cancel()
            results = await asyncio.gather(*still, return_exceptions=True)
            if still:
                log.warning("shutdown cancelled %d running thread run(s)", len(results))



async def _open_store(resources: Resources) -> ThreadStore:
    """The thread store for the configured backend (storage.backend), ready to use."""
    if resources.config.storage.backend == "redis":
        assert resources.redis is not None
        return RedisThreadStore(resources.redis, resources.config.storage.redis_prefix)
    store = SqliteThreadStore(resources.db)
    await store.start()
    return store


THREADS = web.AppKey("threads", ThreadsRuntime)
