"""Typed application state keys and request accessors shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from proxy.auth import Tenant
from proxy.pipeline.registry import PipelineHolder
from proxy.services import Services

SERVICES = web.AppKey("services", Services)
PIPELINE = web.AppKey("pipeline", PipelineHolder)
TENANT = web.RequestKey("tenant", Tenant)
REQUEST_ID = web.RequestKey("request_id", str)


def tenant_of(request: web.Request) -> Tenant:
    """The tenant the auth middleware resolved for this request."""
    return request[TENANT]


def request_id(request: web.Request) -> str:
    """The proxy's id for this request."""
    return request[REQUEST_ID]
