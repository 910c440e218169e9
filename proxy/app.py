"""The aiohttp application: routes, middlewares, and the resources' lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import redis.asyncio
from aiohttp import web

from proxy import tokens
from proxy.api import (
    admin,
    cache,
    chat,
    explain,
    keys,
    models,
    observe,
    openapi,
    passthrough,
    responses,
    threads,
)
from proxy.app_keys import PIPELINE, REQUEST_ID, SERVICES, TENANT
from proxy.auth import KeyRing
from proxy.config import Config
from proxy.errors import InvalidRequest, NotFound, ProxyError
from proxy.pipeline.registry import PipelineHolder
from proxy.pricing import PriceTable
from proxy.services import Services
from proxy.store.bodies import BodyLog
from proxy.store.kv import KVStore, SqliteKV
from proxy.store.ledger import Ledger
from proxy.store.ledger_sync import start_ledger_sync
from proxy.store.redis_kv import RedisKV
from proxy.store.sqlite import open_db
from proxy.tenancy import start_tenancy
from proxy.upstream.client import UpstreamClient
from proxy.upstream.terminal import UpstreamTerminal

log = logging.getLogger("proxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/dashboard", "/openapi.json"})


def _error_response(exc: ProxyError, request_id: str) -> web.Response:
    headers = {**exc.headers, "x-request-id": request_id, "x-proxy-request-id": request_id}
    return web.Response(status=exc.status, body=exc.to_json(), headers=headers,
                        content_type="application/json")


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id, resolve its key, and turn every error into OpenAI JSON."""
    rid = "req_" + secrets.token_hex(12)  # ours, never the client's: ledger ids stay unique
    request[REQUEST_ID] = rid
    try:
        if request.path not in PUBLIC_PATHS:
            request[TENANT] = await request.app[SERVICES].keys.authenticate(request.headers)
        return await handler(request)
    except ProxyError as exc:
        return _error_response(exc, rid)
    except web.HTTPNotFound:
        return _error_response(NotFound(f"Unknown request URL: {request.method} "
                                        f"{request.path}."), rid)
    except web.HTTPMethodNotAllowed:
        return _error_response(InvalidRequest(
            f"Method {request.method} is not allowed for {request.path}.",
            code="method_not_allowed"), rid)
    except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, rid)
        return _error_response(ProxyError("The proxy had an internal error while processing "
                                          f"your request (request id {rid})."), rid)


def _services_ctx(config: Config, rules_path: str) -> Callable[[web.Application],
                                                               AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            auto_decompress=False, skip_auto_headers=("User-Agent",),
        )
        await asyncio.gather(*(asyncio.to_thread(tokens.encoding, name)
                               for name in ("o200k_base", "cl100k_base")))
        db = await open_db(config.storage.sqlite_path)
        ledger = Ledger(db)
        await ledger.start()
        bodies = BodyLog(db)
        await bodies.start()
        ledger.after_flush.append(bodies.flush)
        # caches and threads: a slow or stopped Redis costs a request `redis_timeout` per
        # call (redis-py's retries included, a few), never an unbounded wait
        timeout = config.storage.redis_timeout
        redis_client = (redis.asyncio.from_url(config.storage.redis_url, socket_timeout=timeout,
                                               socket_connect_timeout=timeout)
                        if config.storage.backend == "redis" else None)
        kv: KVStore
        if redis_client is not None:
            kv = RedisKV(redis_client, config.storage.redis_prefix)
        else:
            kv = sqlite_kv = SqliteKV(db)
            await sqlite_kv.start()
        services = Services(
            config=config,
            prices=PriceTable(config.prices, config.default_price),
            upstream=UpstreamClient(config, session),
            keys=KeyRing(config.keys, config.admin_key_sha256),
            db=db,
            ledger=ledger,
            kv=kv,
            redis=redis_client,
            bodies=bodies,
        )
        await start_tenancy(services, session)
        if redis_client is not None:
            services.state["ledger_sync"] = await start_ledger_sync(config.storage)
        app[SERVICES] = services
        holder = PipelineHolder(rules_path, services, UpstreamTerminal(services.upstream))
        app[PIPELINE] = holder
        watcher = asyncio.create_task(_watch_rules(holder, config.server.rules_poll_seconds))
        log.info("pipeline: %s", " -> ".join(holder.current.names) or "(no stages)")
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await services.background.aclose()  # abandoned streams settle and write their rows
        await ledger.flush()  # so that the ledger sync ships the last rows as it closes
        for name, closer in services.state.items():
            aclose = getattr(closer, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # one failing closer must not keep the others open
                    log.exception("closing %s failed", name)
        await ledger.close()
        await db.close()
        if redis_client is not None:
            await redis_client.aclose()
        await session.close()

    return ctx


async def _watch_rules(holder: PipelineHolder, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        holder.reload_if_changed()


def create_app(config: Config, rules_path: str | None = None) -> web.Application:
    """Build the proxy application for `config` (rules from `rules_path` or config)."""
    app = web.Application(middlewares=[errors_and_auth],
                          client_max_size=config.server.max_body_bytes)
    app.cleanup_ctx.append(_services_ctx(config, rules_path or config.server.rules))
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model}", models.retrieve_model)
    app.router.add_post("/v1/proxy/explain", explain.explain)
    admin.add_routes(app)
    cache.add_routes(app)
    keys.add_routes(app)
    observe.add_routes(app)
    threads.add_routes(app)
    responses.add_routes(app)
    openapi.add_routes(app)
    # last: every other /v1 path goes to the upstream as it came
    app.router.add_route("*", "/v1/{tail:.*}", passthrough.forward)
    return app
