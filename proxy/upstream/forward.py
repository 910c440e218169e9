"""Pass-through HTTP: one request sent to an upstream as the client sent it, streamed both ways.

The request body goes up as it arrives (bytes the caller already read, or the client's
stream: uploads are never held whole) and the answer comes back as a Reply whose
`chunks` yield upstream's bytes as they arrive. Headers: hop-by-hop ones (and those
the `Connection` header names) are dropped both ways; the client's key, cookies and
`x-proxy-*` controls never go up, the upstream's key is put in their place; upstream's
identity headers (organization, project, cookies, its request id) never come down.
Requests are not retried: they may create objects upstream, and the SDKs retry on
their own. aiohttp errors never leave this module: they become `UpstreamError` before
the answer starts, or `reply.error` once it is streaming.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Mapping

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.config import UpstreamConfig
from proxy.errors import UpstreamError
from proxy.pipeline.core import Reply
from proxy.upstream.client import AUTH_STATUS, UpstreamClient, credentials_refused

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade"})
# `content-length` is dropped for bodies given as bytes (aiohttp sets it again) and kept
# for a streamed body, which goes up unchanged with the length the client announced
_NOT_SENT = HOP_BY_HOP | {"host", "authorization", "api-key", "cookie", "expect",
                          "accept-encoding", "openai-organization", "openai-project"}
_NOT_RETURNED = HOP_BY_HOP | {"server", "date", "set-cookie", "x-request-id",
                              "openai-organization", "openai-project"}
Body = bytes | AsyncIterable[bytes] | None


def _named_by_connection(headers: Mapping[str, str]) -> set[str]:
    value = ",".join(v for k, v in headers.items() if k.lower() == "connection")
    return {name.strip().lower() for name in value.split(",") if name.strip()}


def request_headers(headers: Mapping[str, str], streamed: bool) -> CIMultiDict[str]:
    """The client's headers as they go upstream (without the upstream's key yet)."""
    skip = _NOT_SENT | _named_by_connection(headers)
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        low = name.lower()
        if low in skip or low.startswith("x-proxy-") or (low == "content-length" and not streamed):
            continue
        kept.add(name, value)
    kept["Accept-Encoding"] = "identity"  # the proxy reads usage from JSON answers
    return kept


def response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Upstream's response headers as they go to the client."""
    skip = _NOT_RETURNED | _named_by_connection(headers)
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in skip:
            kept.add(name, value)
    return kept


async def send(client: UpstreamClient, upstream: UpstreamConfig, method: str, path: str,
               query: str, headers: Mapping[str, str], body: Body) -> Reply:
    """Send the request to `upstream` (`path` under /v1, still percent-encoded) and return
    its answer with the body streaming; 401/403 from upstream become UpstreamError."""
    url = URL(upstream.base_url + path.removeprefix("/v1") + (f"?{query}" if query else ""),
              encoded=True)
    sent = request_headers(headers, streamed=body is not None and not isinstance(body, bytes))
    sent.update(client.authorization(upstream))
    try:
        resp = await client.session.request(method, url, data=body, headers=sent,
                                            timeout=client.stream_timeout(upstream),
                                            allow_redirects=False)
    except asyncio.TimeoutError:
        raise UpstreamError(f"upstream {upstream.name!r} did not answer within "
                            f"{upstream.first_byte_timeout}s", status=504,
                            code="upstream_timeout") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"upstream {upstream.name!r} unreachable: "
                            f"{type(exc).__name__}") from None
    if resp.status in AUTH_STATUS:
        resp.close()
        raise credentials_refused(upstream, resp.status)
    reply = Reply(status=resp.status, headers=dict(response_headers(resp.headers)))
    reply.chunks = _relay(resp, reply)
    return reply


async def _relay(resp: aiohttp.ClientResponse, reply: Reply) -> AsyncIterator[bytes]:
    """Yield upstream's body as it arrives; `reply.completed` once all of it has passed."""
    try:
        async for data in resp.content.iter_any():
            yield data
        reply.completed = True
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        reply.error = f"upstream body broke off: {type(exc).__name__}"
    finally:
        if reply.completed:
            resp.release()
        else:
            resp.close()
