"""One structured JSON log line per request on the `proxy.requests` logger.

A ledger observer: lines are formatted in the ledger's flusher, off the request
path. They carry ids, key, stage, model, tokens, cost and latency; never message
bodies (those go only to the opt-in body log).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TextIO

import orjson

from proxy.observe.window import iso
from proxy.store.ledger import LedgerEntry

log = logging.getLogger("proxy.requests")


def request_line(row: LedgerEntry) -> str:
    """The JSON line for one ledger row."""
    return orjson.dumps({
        "ts": iso(row.ts), "id": row.request_id, "key": row.tenant, "source": row.source,
        "stage": row.stage, "requested_model": row.requested_model, "model": row.model,
        "prompt_tokens": row.prompt_tokens, "cached_tokens": row.cached_tokens,
        "completion_tokens": row.completion_tokens,
        "cost_usd": row.cost_usd, "baseline_usd": row.baseline_usd,
        "latency_ms": round(row.latency_ms, 3),
        "upstream_ms": None if row.upstream_ms is None else round(row.upstream_ms, 3),
        "status": row.status, "stream": row.stream, "error": row.error,
    }).decode()


def log_requests(rows: Sequence[LedgerEntry]) -> None:
    """Emit one line per row at INFO (a ledger observer)."""
    if not log.isEnabledFor(logging.INFO):
        return
    for row in rows:
        log.info(request_line(row))


def configure(stream: TextIO | None = None) -> None:
    """Send `proxy.requests` lines, bare JSON without a prefix, to stderr (once per process)."""
    if not log.propagate:
        return
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.propagate = False
