"""Stored responses: each key's Response objects with their input items, in the KV store.

One KV namespace per key name (`responses:<key>`), so one key never reads
another's responses (another key's id reads as missing: 404) and the backend
follows `[storage] backend` (sqlite or Redis, shared by replicas). Entries
expire after `[storage] responses_ttl_days`. A record keeps the Response, the
request's own input items and the trim stage's summary of the conversation so
far; a chain is read back by following `previous_response_id`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from proxy.store.kv import KVStore

NAMESPACE = "responses:"
SWEEP_EVERY_SECONDS = 3600.0  # drop a namespace's expired entries at most this often


@dataclass(slots=True)
class StoredResponse:
    """A Response with the input items it was made from and the summary it left."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    summary: dict[str, Any] | None = None

    @property
    def items(self) -> list[dict[str, Any]]:
        """Its conversation items: the input, then the output."""
        return [*self.input_items, *self.response.get("output", [])]


@dataclass(slots=True)
class Chain:
    """The conversation a `previous_response_id` continues, oldest item first."""

    items: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None


class ResponseStore:
    """Tenant-scoped stored responses on a KVStore."""

    def __init__(self, kv: KVStore, ttl_seconds: float) -> None:
        self.kv = kv
        self.ttl_seconds = ttl_seconds
        self._swept: dict[str, float] = {}

    @staticmethod
    def _namespace(owner: str) -> str:
        return NAMESPACE + owner

    async def save(self, owner: str, stored: StoredResponse) -> None:
        """Store (or replace) a response for `ttl_seconds`."""
        ns = self._namespace(owner)
        value = orjson.dumps({"response": stored.response, "input_items": stored.input_items,
                              "summary": stored.summary})
        await self.kv.put(ns, stored.response["id"], value, ttl=self.ttl_seconds)
        now = time.monotonic()
        if now - self._swept.get(ns, -SWEEP_EVERY_SECONDS) >= SWEEP_EVERY_SECONDS:
            self._swept[ns] = now
            await self.kv.evict(ns)

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The stored response, or None when absent, expired or another key's."""
        value = await self.kv.get(self._namespace(owner), response_id)
        if value is None:
            return None
        record = orjson.loads(value)
        return StoredResponse(record["response"], record["input_items"], record.get("summary"))

    async def delete(self, owner: str, response_id: str) -> bool:
        """Remove a stored response; False when there was none."""
        if await self.get(owner, response_id) is None:
            return False
        await self.kv.delete(self._namespace(owner), response_id)
        return True

    async def chain(self, owner: str, response_id: str) -> Chain | None:
        """The items of `response_id` and every response before it (None: it is not stored).

        A response missing further back (deleted or expired) ends the chain there.
        The summary is the latest one the chain left.
        """
        newest = await self.get(owner, response_id)
        if newest is None:
            return None
        records = [newest]
        seen = {response_id}
        previous = newest.response.get("previous_response_id")
        while previous and previous not in seen:
            record = await self.get(owner, previous)
            if record is None:
                break
            records.append(record)
            seen.add(previous)
            previous = record.response.get("previous_response_id")
        items = [item for record in reversed(records) for item in record.items]
        return Chain(items, newest.summary)


RESPONSES = web.AppKey("responses", ResponseStore)
