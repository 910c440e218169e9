"""Keeps this process's key ring in step with the store of issued keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from proxy.auth import KeyRing
from proxy.store.keys import KeyStore
from proxy.store.limits_failover import REDIS_DOWN

log = logging.getLogger("proxy.keys")


class KeySync:
    """Re-reads the key store every few seconds so revocations and edits made on other
    processes take effect here (new keys already work at once through the lookup)."""

    def __init__(self, ring: KeyRing, store: KeyStore, every: float) -> None:
        self.ring, self.store, self.every = ring, store, every
        self._task = asyncio.create_task(self._run(), name="key-sync")

    async def sync(self) -> None:
        """Load the store's keys into the key ring now."""
        self.ring.sync_issued(await self.store.all())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.sync()
            except REDIS_DOWN as exc:
                log.debug("key sync skipped: %s", exc)

    async def aclose(self) -> None:
        """Stop syncing."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
