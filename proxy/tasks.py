"""Background tasks of one process that shutdown lets finish briefly, then cancels."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("proxy.tasks")
SHUTDOWN_GRACE_SECONDS = 2.0


class BackgroundTasks:
    """Work that outlives the request that started it (e.g. finishing an abandoned stream).

    The tasks must clean up after themselves when cancelled (their `finally` runs):
    `aclose` gives them a grace period, then cancels and awaits the rest.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` in a task that shutdown waits for."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Let running tasks finish for `grace` seconds, then cancel and await the rest."""
        if not self._tasks:
            return
        _, still = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
        if still:
            log.warning("shutdown cancelled %d background task(s)", len(still))
