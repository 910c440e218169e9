"""Observability endpoints: stats, routing metrics, recommendations, budgets, /metrics,
and the dashboard page.

Who sees what: the admin key sees every key (and may narrow with `key=`); a
tenant key sees only its own rows, and asking for another key's is a 403. Queries
run on a separate read-only sqlite connection (WAL readers do not wait for the
writers), after this worker's pending ledger rows are flushed. `/metrics` needs the
admin key (it names every key and its budget) unless config.toml's `[admin]`
`metrics_public = true`; the auth middleware lets it through so the handler can
decide. `/dashboard` is public: the page holds no data until it is given a key.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.api.request_keys import tenant_of
from proxy.errors import InvalidRequest, PermissionDenied
from proxy.observe.metrics import Metrics
from proxy.observe.recommend import recommendations
from proxy.observe.requestlog import log_requests
from proxy.observe.routing import routing_metrics
from proxy.observe.stats import GROUPS, create_stats_index, stats
from proxy.observe.window import Window, WindowError
from proxy.pipeline.budget_left import BUDGET_LEFT
from proxy.resources import RESOURCES

log = logging.getLogger("proxy.observe")

METRICS = web.AppKey("metrics", Metrics)
READER = web.AppKey("ledger_reader", aiosqlite.Connection)
DASHBOARD_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                 "connect-src 'self'; img-src data:")


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def window_of(request: web.Request) -> Window:
    """The query's window, limited to the caller's own key unless it is the admin."""
    tenant = tenant_of(request)
    wanted = request.query.get("key") or None
    if not tenant.is_admin:
        if wanted is not None and wanted != tenant.name:
            raise PermissionDenied("A tenant key can only read its own stats; use the admin "
                                   "key to read another key's.", param="key")
        wanted = tenant.name
    try:
        return Window.parse(request.query.get("from"), request.query.get("to"), wanted)
    except WindowError as exc:
        raise InvalidRequest(f"Invalid time window: {exc}.", param=exc.param,
                             code="invalid_value") from None


async def _reader(request: web.Request) -> aiosqlite.Connection:
    await request.app[RESOURCES].ledger.flush()
    return request.app[READER]


async def get_stats(request: web.Request) -> web.Response:
    """`GET /v1/proxy/stats?from=&to=&group_by=&key=`: spend, savings, hits, latency."""
    group_by = request.query.get("group_by") or None
    if group_by is not None and group_by not in GROUPS:
        raise InvalidRequest(f"Invalid value for 'group_by': {group_by!r}. Supported values "
                             f"are: {sorted(GROUPS)}.", param="group_by", code="invalid_value")
    window = window_of(request)
    return _json(await stats(await _reader(request), window, request.app[RESOURCES].prices,
                             group_by))


async def get_routing_metrics(request: web.Request) -> web.Response:
    """`GET /v1/proxy/routing/metrics`: route decisions by rule and confidence, with cost."""
    window = window_of(request)
    return _json(await routing_metrics(await _reader(request), window,
                                       request.app[RESOURCES].prices))


async def get_recommendations(request: web.Request) -> web.Response:
    """`GET /v1/proxy/recommendations`: savings opportunities with monthly estimates."""
    window = window_of(request)
    return _json(await recommendations(await _reader(request), window,
                                       request.app[RESOURCES].prices))


async def get_budgets(request: web.Request) -> web.Response:
    """`GET /v1/proxy/budgets`: each visible key's budget and what is left of it."""
    resources = request.app[RESOURCES]
    tenant = tenant_of(request)
    hook = resources.kept.get(BUDGET_LEFT)
    remaining = dict(await hook.refresh()) if hook is not None else {}
    budgets = [{"key": key.name, "budget_usd": key.budget_usd, "period": key.budget_period,
                "soft_budget_usd": key.soft_budget_usd, "remaining_usd": remaining.get(key.name)}
               for key in (t.policy for t in resources.keys.tenants())
               if key is not None and (tenant.is_admin or key.name == tenant.name)]
    return _json({"budgets": sorted(budgets, key=lambda b: b["key"])})


async def get_metrics(request: web.Request) -> web.Response:
    """`GET /metrics`: Prometheus text exposition (admin key, unless metrics_public)."""
    resources = request.app[RESOURCES]
    if not resources.config.metrics_public:
        tenant = await resources.keys.authenticate(request.headers)
        if not tenant.is_admin:
            raise PermissionDenied("Reading /metrics needs the admin key (or set "
                                   "metrics_public = true in config.toml's [admin] table).")
    await resources.ledger.flush()
    hook = resources.kept.get(BUDGET_LEFT)
    if hook is not None:
        await hook.refresh()  # the collector reports the last refresh
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_dashboard(request: web.Request) -> web.Response:
    """`GET /dashboard`: the self-contained cost dashboard page."""
    page = importlib.resources.files("proxy.api").joinpath("static/dashboard.html").read_bytes()
    return web.Response(body=page, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": DASHBOARD_CSP,
                                 "Cache-Control": "no-cache"})


async def _reader_connection(db_path: str, fallback: aiosqlite.Connection
                             ) -> tuple[aiosqlite.Connection, bool]:
    if db_path == ":memory:":
        return fallback, False
    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    reader = await aiosqlite.connect(uri, uri=True)
    await reader.execute("PRAGMA busy_timeout=5000")
    return reader, True


async def _observability_ctx(app: web.Application) -> AsyncIterator[None]:
    resources = app[RESOURCES]
    metrics = Metrics(lambda: resources.kept.get(BUDGET_LEFT), resources.prices)
    app[METRICS] = metrics
    resources.ledger.observers.extend([metrics.observe, log_requests])
    try:
        await create_stats_index(resources.db)
    except sqlite3.OperationalError:  # e.g. another worker still building it: stats work without
        log.warning("could not create the stats index now; stats queries will be slower",
                    exc_info=True)
    reader, owned = await _reader_connection(resources.config.storage.sqlite_path, resources.db)
    app[READER] = reader
    try:
        yield
    finally:
        if owned:
            with contextlib.suppress(Exception):
                await reader.close()


def add_routes(app: web.Application) -> None:
    """Register the observability routes and their resources (after the resources)."""
    app.cleanup_ctx.append(_observability_ctx)
    app.router.add_get("/v1/proxy/stats", get_stats)
    app.router.add_get("/v1/proxy/routing/metrics", get_routing_metrics)
    app.router.add_get("/v1/proxy/recommendations", get_recommendations)
    app.router.add_get("/v1/proxy/budgets", get_budgets)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/dashboard", get_dashboard)
