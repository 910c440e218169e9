"""Each key's batches in the KV store: the proxy's batch id mapped to its upstream batches
(one per model the lines were routed to) and the lines the proxy answered itself, and the
proxy's output file ids to their batch.

One namespace per key name (`batches:<key>`): another key's ids read as missing.
Entries live BATCH_MARK_SECONDS (longer than OpenAI keeps batches and their files).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from proxy.pipeline.passthrough.usage import BATCH_MARK_SECONDS
from proxy.store.kv import KVStore

NAMESPACE = "batches:"
OUTPUT, ERRORS = "output", "error"  # the two files a batch can have


def new_file_id() -> str:
    """A fresh id for a file the proxy serves itself."""
    return "file-" + secrets.token_hex(12)


@dataclass(slots=True)
class BatchRecord:
    """What the proxy keeps of one batch it took in."""

    id: str
    created_at: int
    endpoint: str
    input_file_id: str  # the client's file
    completion_window: str
    metadata: dict[str, Any] | None
    model: str
    order: list[str]  # every custom_id, in input order
    answered: dict[str, dict[str, Any]]  # custom_id -> output line, for the free answers
    # one upstream batch per model; none when every line was answered
    upstream_ids: list[str] = field(default_factory=list)
    output_file_id: str = field(default_factory=new_file_id)
    error_file_id: str = field(default_factory=new_file_id)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A file the proxy serves itself: a batch's merged output or its error file."""

    batch_id: str
    kind: str  # OUTPUT or ERRORS


class BatchStore:
    """Key-scoped batch records on a KVStore."""

    def __init__(self, kv: KVStore) -> None:
        self.kv = kv

    async def save(self, owner: str, record: BatchRecord) -> None:
        """Store a batch and the ids of its two files."""
        ns = NAMESPACE + owner
        await self.kv.put(ns, "batch:" + record.id, orjson.dumps(asdict(record)),
                          ttl=BATCH_MARK_SECONDS)
        for file_id, kind in ((record.output_file_id, OUTPUT), (record.error_file_id, ERRORS)):
            await self.kv.put(ns, "file:" + file_id, orjson.dumps([record.id, kind]),
                              ttl=BATCH_MARK_SECONDS)

    async def batch(self, owner: str, batch_id: str) -> BatchRecord | None:
        """The key's batch, or None (unknown, expired or another key's)."""
        value = await self.kv.get(NAMESPACE + owner, "batch:" + batch_id)
        if value is None:
            return None
        fields = orjson.loads(value)
        if "upstream_id" in fields:  # kept before batches could have several upstream parts
            single = fields.pop("upstream_id")
            fields["upstream_ids"] = [single] if single else []
        return BatchRecord(**fields)

    async def file(self, owner: str, file_id: str) -> FileRecord | None:
        """The key's proxy-served file, or None."""
        value = await self.kv.get(NAMESPACE + owner, "file:" + file_id)
        return FileRecord(*orjson.loads(value)) if value is not None else None
