"""Deferred requests in the KV store: each key's own records, and the queue of those not
yet submitted.

A record lives in its key's namespace (`deferred:<key>`), so another key's ids read as
missing; the queue (`deferred-queue`) maps each waiting id to its key. Records live
BATCH_MARK_SECONDS, like batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from proxy.pipeline.passthrough.usage import BATCH_MARK_SECONDS
from proxy.store.kv import KVStore

NAMESPACE = "deferred:"
QUEUE = "deferred-queue"


@dataclass(slots=True)
class DeferredRecord:
    """One deferred request: what to send, and the batch it went out in."""

    id: str  # also its custom_id in the batch
    owner: str
    created_at: int
    endpoint: str
    body: dict[str, Any]
    batch_id: str | None = None  # the proxy's batch, once submitted

    def view(self, status: str, line: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `proxy.deferred` object with this status and (once finished) its output
        line's `response` and `error`."""
        return {"id": self.id, "object": "proxy.deferred", "created_at": self.created_at,
                "endpoint": self.endpoint, "model": self.body.get("model"), "status": status,
                "batch_id": self.batch_id, "response": (line or {}).get("response"),
                "error": (line or {}).get("error")}


class DeferredStore:
    """Key-scoped deferred records and the queue of unsubmitted ones, on a KVStore."""

    def __init__(self, kv: KVStore) -> None:
        self.kv = kv

    async def save(self, record: DeferredRecord) -> None:
        """Store the record; queue it while it has no batch, unqueue it once it has one."""
        await self.kv.put(NAMESPACE + record.owner, record.id, orjson.dumps(asdict(record)),
                          ttl=BATCH_MARK_SECONDS)
        if record.batch_id is None:
            await self.kv.put(QUEUE, record.id, record.owner.encode(), ttl=BATCH_MARK_SECONDS)
        else:
            await self.kv.delete(QUEUE, record.id)

    async def get(self, owner: str, deferred_id: str) -> DeferredRecord | None:
        """The key's record, or None (unknown, expired or another key's)."""
        value = await self.kv.get(NAMESPACE + owner, deferred_id)
        return DeferredRecord(**orjson.loads(value)) if value is not None else None

    async def queued(self) -> list[DeferredRecord]:
        """Every key's unsubmitted records, oldest first."""
        found = []
        async for deferred_id, owner in self.kv.scan(QUEUE):
            record = await self.get(owner.decode(), deferred_id)
            if record is not None:
                found.append(record)
        return sorted(found, key=lambda r: (r.created_at, r.id))
