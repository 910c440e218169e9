"""The long-lived resources of one worker process, built and closed in one place.

`open_resources` builds them in dependency order (HTTP session, token tables, sqlite,
ledger, key-value store, limit and key stores, Redis sync) and registers each one's
closer on one exit stack, so shutdown closes them in reverse order exactly once.
Stages keep their own long-lived objects (cache entries, the embedder, fitted models)
in `Resources.kept` under typed `KeptKey`s, so a rule reload keeps them warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import aiosqlite
import redis.asyncio
from aiohttp import web

from proxy import tokens
from proxy.alerts import AlertSender
from proxy.auth import KeyRing
from proxy.config import Config, KeyConfig
from proxy.kept import Closable, Kept, close_quietly
from proxy.key_sync import KeySync
from proxy.pricing import PriceTable
from proxy.store.bodies import BodyLog
from proxy.store.keys import KeyStore, RedisKeyStore, SqliteKeyStore
from proxy.store.kv import KVStore, SqliteKV
from proxy.store.ledger import Ledger
from proxy.store.ledger_sync import start_ledger_sync
from proxy.store.limits import LimitStore
from proxy.store.limits_failover import REDIS_DOWN, FailoverLimits
from proxy.store.limits_local import LocalLimits
from proxy.store.limits_redis import RedisLimits
from proxy.store.redis_client import fail_fast_client
from proxy.store.redis_kv import RedisKV
from proxy.store.redis_mux import RedisMux
from proxy.store.spend import SqliteSpend
from proxy.store.sqlite import open_db
from proxy.tasks import BackgroundTasks
from proxy.upstream.client import UpstreamClient

log = logging.getLogger("proxy")


@dataclass
class Resources:
    """What stages and handlers are built with: one set per worker process.

    The services built from them (the pipeline, the threads runtime, the response store,
    the batch intake) have AppKeys of their own, next to their classes. `background`
    holds work that outlives its request (streams read on after their client left);
    `kept` the stages' own objects.
    """

    config: Config
    prices: PriceTable
    upstream: UpstreamClient
    keys: KeyRing
    db: aiosqlite.Connection
    ledger: Ledger
    kv: KVStore
    limits: LimitStore
    key_store: KeyStore
    session: aiohttp.ClientSession
    closing: contextlib.AsyncExitStack
    redis: redis.asyncio.Redis | None = None
    bodies: BodyLog | None = None
    alerts: AlertSender | None = None
    background: BackgroundTasks = field(default_factory=BackgroundTasks)
    kept: Kept = field(default_factory=Kept)

    def __post_init__(self) -> None:
        self.closing.push_async_callback(self.kept.aclose)


RESOURCES = web.AppKey("resources", Resources)


@contextlib.asynccontextmanager
async def open_resources(config: Config) -> AsyncIterator[Resources]:
    """Build every resource of the process in order; close them in reverse on exit."""
    async with contextlib.AsyncExitStack() as closing:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            auto_decompress=False, skip_auto_headers=("User-Agent",),
        )
        closing.push_async_callback(session.close)
        await asyncio.gather(*(asyncio.to_thread(tokens.encoding, name)
                               for name in ("o200k_base", "cl100k_base")))
        db = await open_db(config.storage.sqlite_path)
        closing.push_async_callback(db.close)
        ledger = Ledger(db)
        await ledger.start()
        closing.push_async_callback(ledger.close)
        bodies = BodyLog(db)
        await bodies.start()
        ledger.after_flush.append(bodies.flush)
        storage = config.storage
        # caches and threads: a slow or stopped Redis costs a request `redis_timeout` per
        # call (redis-py's retries included, a few), never an unbounded wait
        client = (redis.asyncio.from_url(storage.redis_url, socket_timeout=storage.redis_timeout,
                                         socket_connect_timeout=storage.redis_timeout)
                  if storage.backend == "redis" else None)
        kv: KVStore
        if client is not None:
            closing.push_async_callback(client.aclose)
            kv = RedisKV(client, storage.redis_prefix)
        else:
            kv = sqlite_kv = SqliteKV(db)
            await sqlite_kv.start()
        keys = KeyRing(config.keys, config.admin_key_sha256)
        limits, key_store = await _open_tenancy(config, db)
        closing.push_async_callback(close_quietly, "limits", limits)
        if isinstance(key_store, Closable):  # the Redis one holds its own client
            closing.push_async_callback(close_quietly, "key_store", key_store)
        await _start_key_sync(keys, key_store, config, closing)
        if client is not None and (sync := await start_ledger_sync(storage)) is not None:
            closing.push_async_callback(close_quietly, "ledger_sync", sync)
        resources = Resources(
            config=config, prices=PriceTable(config.prices, config.default_price),
            upstream=UpstreamClient(config, session), keys=keys, db=db, ledger=ledger, kv=kv,
            limits=limits, key_store=key_store, session=session, closing=closing,
            redis=client, bodies=bodies,
            alerts=(AlertSender(config.alerts_webhook, session, limits)
                    if config.alerts_webhook else None),
        )
        if resources.alerts is not None:
            closing.push_async_callback(close_quietly, "alerts", resources.alerts)
        # last in, first out: the ledger flushes after abandoned streams wrote their rows,
        # so that the ledger sync ships the last rows as it closes
        closing.push_async_callback(ledger.flush)
        closing.push_async_callback(resources.background.aclose)
        yield resources


async def _open_tenancy(config: Config, db: aiosqlite.Connection
                        ) -> tuple[LimitStore, KeyStore]:
    """The limit store and the key store: shared through Redis (with the `redis_failure`
    policy) for the redis backend, in-process with spend and keys in sqlite otherwise."""
    storage = config.storage
    if storage.backend != "redis":
        local = LocalLimits(SqliteSpend(db))
        await local.start()
        sqlite_keys = SqliteKeyStore(db)
        await sqlite_keys.start()
        return local, sqlite_keys
    where = storage.redis_url.rpartition("@")[2]
    shared = RedisLimits(RedisMux(storage.redis_url, storage.redis_timeout), storage.redis_prefix)
    try:
        await shared.start()
    except REDIS_DOWN as exc:
        log.error("redis at %s is unreachable at start-up (%s)", where, exc)
    limits = FailoverLimits(shared, LocalLimits(), storage.redis_failure, where)
    client = fail_fast_client(storage.redis_url, storage.redis_timeout)
    return limits, RedisKeyStore(client, storage.redis_prefix)


async def _start_key_sync(keys: KeyRing, store: KeyStore, config: Config,
                          closing: contextlib.AsyncExitStack) -> None:
    """Load issued keys now, follow the store's changes, and look unknown keys up in it."""
    sync = KeySync(keys, store, config.keys_sync_seconds)
    closing.push_async_callback(sync.aclose)
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

    keys.lookup = lookup
