"""Cache administration: `DELETE /v1/proxy/cache/{namespace}` (admin key only).

Purges one tenant namespace from every cache: each kept object that is `Purgeable`
(has an `async purge_namespace(namespace) -> int`: the exact cache's entries, and any
other cache that keeps one) is asked to drop it.
"""

from __future__ import annotations

from aiohttp import web

from proxy.api.request_keys import tenant_of
from proxy.errors import PermissionDenied
from proxy.pipeline.stages.exact_cache import exact_entries
from proxy.resources import RESOURCES


async def purge_namespace(request: web.Request) -> web.Response:
    """Drop every cached answer of one namespace; answers how many went per cache."""
    if not tenant_of(request).is_admin:
        raise PermissionDenied("Purging a cache needs the admin key.")
    resources = request.app[RESOURCES]
    namespace = request.match_info["namespace"]
    exact_entries(resources)  # entries stored before a restart are purged even if unused since
    purged = {}
    for name, cache in resources.kept.purgeable():
        purged[name] = await cache.purge_namespace(namespace)
    return web.json_response({"object": "cache.purge", "namespace": namespace,
                              "purged": purged})


def add_routes(app: web.Application) -> None:
    """Register the cache admin routes."""
    app.router.add_delete("/v1/proxy/cache/{namespace}", purge_namespace)
