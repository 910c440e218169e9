"""What the auth middleware attaches to each request: its tenant and the proxy's id."""

from __future__ import annotations

from aiohttp import web

from proxy.auth import Tenant

TENANT = web.RequestKey("tenant", Tenant)
REQUEST_ID = web.RequestKey("request_id", str)


def tenant_of(request: web.Request) -> Tenant:
    """The tenant the auth middleware resolved for this request."""
    return request[TENANT]


def request_id(request: web.Request) -> str:
    """The proxy's id for this request."""
    return request[REQUEST_ID]
