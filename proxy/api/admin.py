"""Operational endpoints: health and readiness (stats, explain, metrics join here)."""

from __future__ import annotations

from aiohttp import web

from proxy.pipeline.registry import PIPELINE
from proxy.resources import RESOURCES


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: the pipeline is built (models loaded) and the rules are valid."""
    holder = request.app[PIPELINE]
    loading = request.app[RESOURCES].kept.loading()
    if loading:  # e.g. the embedding model is still loading in its worker thread
        return web.json_response({"status": "loading", "waiting_for": loading}, status=503)
    return web.json_response({"status": "ready", "pipeline": holder.current.names,
                              "rules_error": holder.last_error})


def add_routes(app: web.Application) -> None:
    """Register the operational routes."""
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
