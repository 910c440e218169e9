"""The aiohttp application: routes, middlewares, and the resources' lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from proxy.api import (
    admin,
    batches,
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
from proxy.api.request_keys import REQUEST_ID, TENANT
from proxy.batches.intake import BATCHES, BatchIntake
from proxy.batches.window import DEFERRED_QUEUE, DeferredQueue
from proxy.config import Config
from proxy.errors import InvalidRequest, NotFound, ProxyError
from proxy.kept import close_quietly
from proxy.pipeline.registry import PIPELINE, PipelineHolder
from proxy.resources import RESOURCES, Resources, open_resources
from proxy.responses.store import RESPONSES, ResponseStore
from proxy.threads.runtime import THREADS, ThreadsRuntime
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
            request[TENANT] = await request.app[RESOURCES].keys.authenticate(request.headers)
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


def _resources_ctx(config: Config, rules_path: str) -> Callable[[web.Application],
                                                                AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_resources(config) as resources:
            app[RESOURCES] = resources
            holder = await _open_services(app, resources, rules_path)
            watcher = asyncio.create_task(_watch_rules(holder,
                                                       config.server.rules_poll_seconds))
            log.info("pipeline: %s", " -> ".join(holder.current.names) or "(no stages)")
            yield
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    return ctx


async def _open_services(app: web.Application, resources: Resources,
                         rules_path: str) -> PipelineHolder:
    """The services built from the resources, each under its AppKey: the pipeline, the
    threads runtime (closed first at shutdown: its running turns still record), the
    response store, the batch intake and the queue of deferred requests."""
    holder = app[PIPELINE] = PipelineHolder(rules_path, resources,
                                            UpstreamTerminal(resources.upstream))
    threads = app[THREADS] = await ThreadsRuntime.open(resources, holder)
    resources.closing.push_async_callback(close_quietly, "threads", threads)
    app[RESPONSES] = ResponseStore(resources.kv,
                                   resources.config.storage.responses_ttl_days * 86400.0)
    intake = app[BATCHES] = BatchIntake(resources)
    deferred = app[DEFERRED_QUEUE] = DeferredQueue(resources, intake, holder)
    deferred.start()
    resources.closing.push_async_callback(close_quietly, "deferred", deferred)
    return holder


async def _watch_rules(holder: PipelineHolder, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        await holder.reload_when_ready()


def create_app(config: Config, rules_path: str | None = None) -> web.Application:
    """Build the proxy application for `config` (rules from `rules_path` or config)."""
    app = web.Application(middlewares=[errors_and_auth],
                          client_max_size=config.server.max_body_bytes)
    app.cleanup_ctx.append(_resources_ctx(config, rules_path or config.server.rules))
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
    batches.add_routes(app)
    # last: every other /v1 path goes to the upstream as it came
    app.router.add_route("*", "/v1/{tail:.*}", passthrough.forward)
    return app
