"""`x-proxy-defer: batch` on a chat or Responses request: asked for, allowed, possible.

A key may defer requests only when its policy says `defer_batch = true`; otherwise, or
for another header value, the request is refused with a 400 that names the header (it
is never run now at the full price, which would silently ignore what the client asked).
Streamed requests and Responses that continue a stored response cannot be deferred.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.auth import Tenant
from proxy.errors import InvalidRequest

HEADER = "x-proxy-defer"
VALUE = "batch"


def cannot_defer(why: str) -> InvalidRequest:
    """The 400 for a request that asked to be deferred and cannot be."""
    return InvalidRequest(f"{HEADER}: {why}", param=HEADER, code="defer_not_supported")


def wants_deferral(headers: Mapping[str, str], tenant: Tenant, body: Mapping[str, Any]) -> bool:
    """True when the request asks to be deferred and may be; raises when it asks and may
    not (`body` is the request as the client sent it)."""
    value = headers.get(HEADER)
    if value is None:
        return False
    if value.strip().lower() != VALUE:
        raise cannot_defer(f"{value!r} is not supported; the only value is '{VALUE}'.")
    if tenant.policy is None or not tenant.policy.defer_batch:
        raise cannot_defer("deferring requests is not enabled for this key (key policy "
                           "`defer_batch`). Send the request without the header, or submit "
                           "it in a batch (POST /v1/batches).")
    if body.get("stream"):
        raise cannot_defer("a streamed request cannot be deferred.")
    if body.get("previous_response_id"):
        raise cannot_defer("a response that continues a stored response cannot be deferred.")
    return True
