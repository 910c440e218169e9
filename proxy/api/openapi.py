"""`GET /openapi.json`: what this proxy serves, described from its own router.

Every route the application registers is listed with its methods, path parameters and
the first line of its handler's docstring, so the description cannot drift from the
code. The catch-all that forwards every other `/v1/*` path to the upstream is described
once, as `x-passthrough`.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

_PARAM = re.compile(r"{(\w+)(?::[^}]*)?}")
ERROR = {"description": "an error in OpenAI's shape: {\"error\": {\"message\", \"type\", "
                        "\"param\", \"code\"}}"}


def _operation(handler: Any, path: str) -> dict[str, Any]:
    lines = (getattr(handler, "__doc__", None) or "").strip().splitlines()
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in _PARAM.findall(path)]
    operation: dict[str, Any] = {"summary": lines[0] if lines else "",
                                 "responses": {"200": {"description": "OK"}, "default": ERROR}}
    if params:
        operation["parameters"] = params
    return operation


def describe(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s routes."""
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if not path or route.method in ("HEAD", "*"):
            continue
        clean = _PARAM.sub(r"{\1}", path)
        paths.setdefault(clean, {})[route.method.lower()] = _operation(route.handler, clean)
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-cost-proxy", "version": _version(),
                 "description": "OpenAI-compatible proxy that cuts LLM spend. Clients use "
                                "their proxy key as the bearer token."},
        "paths": dict(sorted(paths.items())),
        "components": {"securitySchemes": {"proxyKey": {"type": "http", "scheme": "bearer"}}},
        "security": [{"proxyKey": []}],
        "x-passthrough": "every other /v1/* path is forwarded to the upstream as it came "
                         "(authenticated, limited, priced and recorded)",
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-cost-proxy")
    except PackageNotFoundError:
        return "0.0.0"  # run from a checkout that was never installed


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI description of the paths this proxy serves."""
    return web.json_response(describe(request.app))


def add_routes(app: web.Application) -> None:
    """Register `GET /openapi.json`."""
    app.router.add_get("/openapi.json", openapi)
