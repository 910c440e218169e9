"""Per-key state set up at start-up: the limit store, the key store, key sync and alerts.

They live in `services.state` (so rule reloads keep counters) under the names
below; `limits_of`, `key_store_of` and `alerts_of` read them back typed. With
`[storage] backend = "redis"` everything is shared through Redis (with the
`redis_failure` policy); otherwise it is in-process with spend and keys in sqlite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

import aiohttp

from proxy.alerts import AlertSender
from proxy.auth import KeyRing
from proxy.config import KeyConfig
from proxy.services import Services
from proxy.store.keys import KeyStore, RedisKeyStore, SqliteKeyStore
from proxy.store.limits import LimitStore
from proxy.store.limits_failover import REDIS_DOWN, FailoverLimits
from proxy.store.limits_local import LocalLimits
from proxy.store.limits_redis import RedisLimits
from proxy.store.redis_client import fail_fast_client
from proxy.store.redis_mux import RedisMux
from proxy.store.spend import SqliteSpend

log = logging.getLogger("proxy.keys")
LIMITS, KEY_STORE, KEY_SYNC, ALERTS = "limits", "key_store", "key_sync", "alerts"


def limits_of(services: Services) -> LimitStore:
    """The limit store (an in-memory one when start-up did not make one, as in unit tests)."""
    return cast(LimitStore, services.state.setdefault(LIMITS, LocalLimits()))


def key_store_of(services: Services) -> KeyStore:
    """The store of keys issued through the admin API."""
    return cast(KeyStore, services.state[KEY_STORE])


def alerts_of(services: Services) -> AlertSender | None:
    """The webhook alert sender, when `[alerts] webhook_url` is set."""
    return cast(AlertSender | None, services.state.get(ALERTS))


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


async def start_tenancy(services: Services, session: aiohttp.ClientSession) -> None:
    """Create the limit store, key store, key sync and alert sender into `services.state`."""
    config, storage = services.config, services.config.storage
    limits: LimitStore
    store: KeyStore
    if storage.backend == "redis":
        client = fail_fast_client(storage.redis_url, storage.redis_timeout)
        where = storage.redis_url.rpartition("@")[2]
        shared = RedisLimits(RedisMux(storage.redis_url, storage.redis_timeout),
                             storage.redis_prefix)
        try:
            await shared.start()
        except REDIS_DOWN as exc:
            log.error("redis at %s is unreachable at start-up (%s)", where, exc)
        limits = FailoverLimits(shared, LocalLimits(), storage.redis_failure, where)
        store = RedisKeyStore(client, storage.redis_prefix)
    else:
        local = LocalLimits(SqliteSpend(services.db))
        await local.start()
        limits = local
        store = SqliteKeyStore(services.db)
        await store.start()
    sync = KeySync(services.keys, store, config.keys_sync_seconds)
    try:
        await store.reserve(k.name for k in config.keys)
        await sync.sync()
    except REDIS_DOWN as exc:
        log.error("could not load issued keys from redis (%s); retrying in the background", exc)

    async def lookup(sha256: str) -> KeyConfig | None:
        try:
            return await store.by_hash(sha256)
        except REDIS_DOWN:
            return None

    services.keys.lookup = lookup
    services.state[KEY_SYNC] = sync
    if config.alerts_webhook:
        services.state[ALERTS] = AlertSender(config.alerts_webhook, session, limits)
    services.state[KEY_STORE] = store
    services.state[LIMITS] = limits
