"""`/v1/proxy/keys`: issue, list, change and revoke proxy keys at run time (admin key only).

The secret is generated here and shown once, in the POST answer; only its sha256
is stored (key store) and loaded into the key ring. Keys from config.toml are
listed too but can only be changed in the file.

A name is a tenant identity (thread owner, stats scope, spend, cache namespace), so
`admin` and every name ever issued or found in config.toml (revoked and removed
ones included) are refused (`key_exists` while in use, else `name_taken`): a new key
never inherits another's threads, stats, spend or cache.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from aiohttp import web

from proxy.api.body import read_body
from proxy.api.request_keys import tenant_of
from proxy.api.validate import parse_json_object
from proxy.auth import ADMIN_NAME
from proxy.config import ConfigError, KeyConfig, Section, hash_key, parse_key
from proxy.errors import InvalidRequest, NotFound, PermissionDenied
from proxy.periods import current_period
from proxy.resources import RESOURCES, Resources
from proxy.store.limits import to_usd

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
POLICY_FIELDS = ("namespace", "budget_usd", "budget_period", "soft_budget_usd", "rpm", "tpm",
                 "max_concurrent", "allowed_models", "log_bodies", "defer_batch")


def _admin_resources(request: web.Request) -> Resources:
    if not tenant_of(request).is_admin:
        raise PermissionDenied("Managing proxy keys needs the admin key.")
    return request.app[RESOURCES]


def _validated(name: str, fields: dict[str, Any], sha256: str) -> KeyConfig:
    unknown = sorted(set(fields) - set(POLICY_FIELDS))
    if unknown:
        raise InvalidRequest(f"Unknown field(s) {unknown}; known: {list(POLICY_FIELDS)}.",
                             param=unknown[0])
    try:
        return parse_key(name, Section({**fields, "sha256": sha256}, "request", f"keys.{name}"))
    except ConfigError as exc:
        raise InvalidRequest(exc.problem) from None


async def _describe(resources: Resources, key: KeyConfig, source: str) -> dict[str, Any]:
    period = current_period(key.budget_period, resources.config.server.timezone, time.time())
    spent = await resources.limits.spent(key.name, period.name)
    policy = {f: getattr(key, f) for f in POLICY_FIELDS}
    return {"object": "proxy.key", "id": key.name, "name": key.name, "source": source,
            **policy, "period": period.name, "spent_usd": to_usd(spent)}


def _config_key(resources: Resources, name: str) -> KeyConfig | None:
    return next((k for k in resources.config.keys if k.name == name), None)


async def create_key(request: web.Request) -> web.Response:
    """`POST /v1/proxy/keys` {"name", policy fields...}: the new key, with its secret once."""
    resources = _admin_resources(request)
    fields = parse_json_object(await read_body(request))
    name = fields.pop("name", None)
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidRequest("'name' must be 1-64 letters, digits, '_', '.' or '-'.",
                             param="name")
    store = resources.key_store
    if _config_key(resources, name):
        raise InvalidRequest(f"A key named '{name}' already exists.", param="name",
                             code="key_exists")
    if name == ADMIN_NAME:
        raise InvalidRequest(f"The name '{name}' is reserved for the admin key; choose "
                             "another name.", param="name", code="name_taken")
    secret = "sk-proxy-" + secrets.token_urlsafe(32)
    key = _validated(name, fields, hash_key(secret))
    if not await store.create(key):
        if await store.by_name(name):
            raise InvalidRequest(f"A key named '{name}' already exists.", param="name",
                                 code="key_exists")
        raise InvalidRequest(f"The name '{name}' was used by an earlier key (revoked, or "
                             "removed from config.toml) and is never issued again: its "
                             "threads, stats and spend stay its own. Choose another name.",
                             param="name", code="name_taken")
    resources.keys.add_issued(key)
    body = await _describe(resources, key, "api")
    return web.json_response({**body, "key": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """`GET /v1/proxy/keys`: every key (config.toml and issued), without secrets."""
    resources = _admin_resources(request)
    data = [await _describe(resources, k, "config") for k in resources.config.keys]
    data += [await _describe(resources, k, "api") for k in await resources.key_store.all()]
    return web.json_response({"object": "list", "data": data})


async def _issued(resources: Resources, name: str) -> KeyConfig:
    key = await resources.key_store.by_name(name)
    if key is not None:
        return key
    if _config_key(resources, name):
        raise InvalidRequest(f"Key '{name}' is defined in {resources.config.path}; change it "
                             "there.", code="key_in_config")
    raise NotFound(f"No proxy key named '{name}'.")


async def get_key(request: web.Request) -> web.Response:
    """`GET /v1/proxy/keys/{name}`."""
    resources = _admin_resources(request)
    name = request.match_info["name"]
    config_key = _config_key(resources, name)
    if config_key is not None:
        return web.json_response(await _describe(resources, config_key, "config"))
    return web.json_response(await _describe(resources, await _issued(resources, name), "api"))


async def update_key(request: web.Request) -> web.Response:
    """`PATCH /v1/proxy/keys/{name}` {policy fields...}: change an issued key's policy."""
    resources = _admin_resources(request)
    key = await _issued(resources, request.match_info["name"])
    changes = parse_json_object(await read_body(request))
    current = {f: getattr(key, f) for f in POLICY_FIELDS}
    current["allowed_models"] = list(key.allowed_models) if key.allowed_models else None
    merged = {k: v for k, v in {**current, **changes}.items() if v is not None}
    updated = _validated(key.name, merged, key.sha256)
    await resources.key_store.put(updated)
    resources.keys.add_issued(updated)
    return web.json_response(await _describe(resources, updated, "api"))


async def delete_key(request: web.Request) -> web.Response:
    """`DELETE /v1/proxy/keys/{name}`: revoke an issued key at once."""
    resources = _admin_resources(request)
    key = await _issued(resources, request.match_info["name"])
    await resources.key_store.delete(key.name)
    resources.keys.remove(key.sha256)
    return web.json_response({"object": "proxy.key", "id": key.name, "deleted": True})


def add_routes(app: web.Application) -> None:
    """Register the key management routes."""
    app.router.add_post("/v1/proxy/keys", create_key)
    app.router.add_get("/v1/proxy/keys", list_keys)
    app.router.add_get("/v1/proxy/keys/{name}", get_key)
    app.router.add_patch("/v1/proxy/keys/{name}", update_key)
    app.router.add_delete("/v1/proxy/keys/{name}", delete_key)
