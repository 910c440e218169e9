"""`GET /openapi.json`: what this proxy serves, described from its own router.

Every route the application registers is listed with its methods, path parameters and
the first line of its handler's docstring, so the description cannot drift from the
code. The catch-all that forwards every other `/v1/*` path to the upstream is described
once, as `x-passthrough`. The main endpoints carry a minimal request-body schema (the
fields clients send most, `additionalProperties` left open as OpenAI adds fields), so
clients and fuzzers know the shape; `POST /v1/embeddings`, served by the catch-all, is
listed for its body.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

_PARAM = re.compile(r"{(\w+)(?::[^}]*)?}")
ERROR = {"description": "an error in OpenAI's shape: {\"error\": {\"message\", \"type\", "
                        "\"param\", \"code\"}}"}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}},
                          {"type": "null"}]},
    "name": {"type": "string"}, "tool_call_id": {"type": "string"}}}
_COMMON = {"model": {"type": "string"}, "stream": {"type": "boolean"},
           "temperature": {"type": "number", "minimum": 0, "maximum": 2},
           "user": {"type": "string"}, "tools": {"type": "array", "items": {"type": "object"}},
           "metadata": {"type": "object", "additionalProperties": {"type": "string"}}}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/chat/completions"): {"type": "object", "required": ["model", "messages"],
        "properties": {**_COMMON, "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                       "max_tokens": {"type": "integer", "minimum": 1},
                       "n": {"type": "integer", "minimum": 1, "maximum": 128}}},
    ("post", "/v1/responses"): {"type": "object", "required": ["model"], "properties": {
        **_COMMON, "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": _MESSAGE}]},
        "instructions": {"type": "string"}, "previous_response_id": {"type": "string"},
        "store": {"type": "boolean"}, "max_output_tokens": {"type": "integer", "minimum": 16}}},
    ("post", "/v1/embeddings"): {"type": "object", "required": ["model", "input"], "properties": {
        "model": {"type": "string"}, "input": {"anyOf": [{"type": "string"}, _STRINGS]},
        "dimensions": {"type": "integer", "minimum": 1},
        "encoding_format": {"enum": ["float", "base64"]}}},
}


def _summary(handler: Any) -> str:
    lines = (getattr(handler, "__doc__", None) or "").strip().splitlines()
    return lines[0] if lines else ""


def _operation(summary: str, path: str, method: str) -> dict[str, Any]:
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in _PARAM.findall(path)]
    operation: dict[str, Any] = {"summary": summary,
                                 "responses": {"200": {"description": "OK"}, "default": ERROR}}
    if params:
        operation["parameters"] = params
    if (method, path) in BODIES:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": BODIES[method, path]}}}
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
        method = route.method.lower()
        paths.setdefault(clean, {})[method] = _operation(_summary(route.handler), clean, method)
    paths["/v1/embeddings"] = {"post": _operation(
        "Embeddings: forwarded to the upstream; a repeat is answered from the embeddings cache.",
        "/v1/embeddings", "post")}
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
