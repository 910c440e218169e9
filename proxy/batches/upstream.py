"""The proxy's own calls to the upstream's Files and Batches API, for batches it rewrites.

Each call is one request with the upstream's key; a non-2xx answer is raised as
`UpstreamRefusal`, which the client receives with upstream's status and body unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from proxy.config import UpstreamConfig
from proxy.errors import ProxyError, UpstreamError
from proxy.upstream.client import AUTH_STATUS, UpstreamClient, credentials_refused


class UpstreamRefusal(ProxyError):
    """The upstream answered an error: passed to the client as it came."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(body.decode("utf-8", "replace"))
        self.status, self.body = status, body

    def to_json(self) -> bytes:
        """Upstream's own error body."""
        return self.body


class UpstreamBatches:
    """Files and batches on one upstream (the first: the one pass-through files go to)."""

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client
        self.upstream: UpstreamConfig = client.config.upstreams[0]

    async def _call(self, method: str, path: str, data: Any = None) -> bytes:
        url = self.upstream.base_url + path
        headers = self.client.authorization(self.upstream)
        if isinstance(data, bytes):
            headers = {**headers, "Content-Type": "application/json"}
        try:
            async with self.client.session.request(
                    method, url, data=data, headers=headers,
                    timeout=self.client.stream_timeout(self.upstream)) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise UpstreamError(f"upstream {self.upstream.name!r} unreachable: "
                                f"{type(exc).__name__}") from None
        if resp.status in AUTH_STATUS:
            raise credentials_refused(self.upstream, resp.status)
        if not 200 <= resp.status < 300:
            raise UpstreamRefusal(resp.status, body)
        return body

    async def _json(self, method: str, path: str, data: Any = None) -> dict[str, Any]:
        document = orjson.loads(await self._call(method, path, data))
        if not isinstance(document, dict):
            raise UpstreamError(f"upstream {self.upstream.name!r} answered {path} with "
                                "something that is not a JSON object")
        return document

    async def file_content(self, file_id: str) -> bytes:
        """A file's bytes."""
        return await self._call("GET", f"/files/{file_id}/content")

    async def upload_batch_input(self, name: str, data: bytes) -> str:
        """Upload a batch input file; its id."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", data, filename=name, content_type="application/jsonl")
        return str((await self._json("POST", "/files", form))["id"])

    async def create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a batch; the batch object."""
        return await self._json("POST", "/batches", orjson.dumps(body))

    async def batch(self, batch_id: str) -> dict[str, Any]:
        """The batch object as it is now."""
        return await self._json("GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask for the batch to be cancelled; the batch object."""
        return await self._json("POST", f"/batches/{batch_id}/cancel")
