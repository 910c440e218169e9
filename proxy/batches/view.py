"""The batch and file objects the client sees for a batch the proxy took in.

A batch with upstream parts (one upstream batch per model) shows them combined, as they
are now, under the proxy's ids: one status, request counts over every line (the proxy's
answers count as completed) and the usage of all parts. A batch the proxy answered
whole is `completed` from the start, with zero usage.
"""

from __future__ import annotations

from typing import Any

from proxy.batches.store import OUTPUT, BatchRecord
from proxy.pipeline.passthrough.usage import BATCH_FINISHED

DAY_SECONDS = 86_400
UNFINISHED_ORDER = ("validating", "in_progress", "finalizing")  # a combined batch is as far
FINISHED_ORDER = ("completed", "cancelled", "expired", "failed")  # as its slowest part
COUNTS = ("total", "completed", "failed")
USAGE = ("input_tokens", "output_tokens", "total_tokens")


def combined_status(statuses: list[str]) -> str:
    """One status for several upstream batches: `cancelling` while any part is; else the
    least advanced unfinished part's; once all finished, `completed` if any part completed."""
    unfinished = [s for s in statuses if s not in BATCH_FINISHED]
    if "cancelling" in unfinished:
        return "cancelling"
    order = UNFINISHED_ORDER if unfinished else FINISHED_ORDER
    known = [s for s in (unfinished or statuses) if s in order]
    return min(known, key=order.index) if known else statuses[0]


def _sum(parts: list[dict[str, Any]], key: str, fields: tuple[str, ...]) -> dict[str, int] | None:
    found = [p[key] for p in parts if isinstance(p.get(key), dict)]
    if not found:
        return None
    return {f: sum(int(part.get(f) or 0) for part in found) for f in fields}


def combined_upstream(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several upstream batch objects as one (the first one's other fields): combined
    status, summed request counts and usage, a file id when any part has that file."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    usage = _sum(parts, "usage", USAGE)
    return {**first, "status": combined_status([str(p.get("status")) for p in parts]),
            "request_counts": _sum(parts, "request_counts", COUNTS),
            "usage": {**(first.get("usage") or {}), **usage} if usage else None,
            "output_file_id": next((p["output_file_id"] for p in parts
                                    if p.get("output_file_id")), None),
            "error_file_id": next((p["error_file_id"] for p in parts
                                   if p.get("error_file_id")), None)}


def _counts(record: BatchRecord, upstream: dict[str, Any] | None) -> dict[str, int]:
    counts = (upstream or {}).get("request_counts") or {}
    return {"total": len(record.order),
            "completed": len(record.answered) + int(counts.get("completed") or 0),
            "failed": int(counts.get("failed") or 0)}


def answered_batch(record: BatchRecord) -> dict[str, Any]:
    """The batch object of a batch whose every line the proxy answered."""
    at = record.created_at
    return {"id": record.id, "object": "batch", "endpoint": record.endpoint,
            "model": record.model, "errors": None, "input_file_id": record.input_file_id,
            "completion_window": record.completion_window, "status": "completed",
            "output_file_id": record.output_file_id, "error_file_id": None,
            "created_at": at, "in_progress_at": at, "expires_at": at + DAY_SECONDS,
            "finalizing_at": at, "completed_at": at, "failed_at": None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": None,
            "request_counts": _counts(record, None), "metadata": record.metadata,
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def merged_batch(record: BatchRecord, upstream: dict[str, Any]) -> dict[str, Any]:
    """The upstream batch object under the proxy's ids, counting every line. The output
    file is shown once the batch has finished (with the proxy's answers, even when the
    upstream had no output), the error file when the upstream has one."""
    finished = upstream.get("status") in BATCH_FINISHED
    has_output = bool(upstream.get("output_file_id") or record.answered)
    return {**upstream, "id": record.id, "input_file_id": record.input_file_id,
            "output_file_id": record.output_file_id if finished and has_output else None,
            "error_file_id": record.error_file_id if upstream.get("error_file_id") else None,
            "request_counts": _counts(record, upstream), "metadata": record.metadata}


def file_object(record: BatchRecord, kind: str, size: int) -> dict[str, Any]:
    """The file object of a batch's output or error file."""
    file_id = record.output_file_id if kind == OUTPUT else record.error_file_id
    return {"id": file_id, "object": "file", "bytes": size, "created_at": record.created_at,
            "filename": f"{record.id}_{kind}.jsonl", "purpose": f"batch_{kind}",
            "status": "processed", "status_details": None, "expires_at": None}
