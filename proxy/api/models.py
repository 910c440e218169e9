"""`GET /v1/models` and `GET /v1/models/{model}`: what the upstreams list, filtered per key."""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.api.request_keys import tenant_of
from proxy.errors import NotFound
from proxy.resources import RESOURCES
from proxy.upstream.client import fetch_models


async def _visible_models(request: web.Request) -> list[dict[str, object]]:
    tenant = tenant_of(request)
    models = await fetch_models(request.app[RESOURCES].upstream)
    return [m for m in models if tenant.may_use(str(m["id"]))]


async def list_models(request: web.Request) -> web.Response:
    """List the models this key may use."""
    data = await _visible_models(request)
    return web.Response(body=orjson.dumps({"object": "list", "data": data}),
                        content_type="application/json")


async def retrieve_model(request: web.Request) -> web.Response:
    """One model object, or OpenAI's 404 `model_not_found`."""
    wanted = request.match_info["model"]
    for model in await _visible_models(request):
        if model["id"] == wanted:
            return web.Response(body=orjson.dumps(model), content_type="application/json")
    raise NotFound(f"The model '{wanted}' does not exist or you do not have access to it.",
                   param="model", code="model_not_found")
