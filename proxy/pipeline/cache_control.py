"""The client's say over the caches: the `x-proxy-cache` request header.

    no-cache   do not answer from the cache; store the fresh answer (replacing the old)
    no-store   neither answer from nor store into the cache (HTTP's no-store)
    refresh    drop the stored answer, answer fresh, and store that (when cacheable)

Directives combine with commas (`no-cache, no-store`); unknown ones are ignored
so another cache's directives can share the header.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.pipeline.core import Context, Reply

HEADER = "x-proxy-cache"


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    """What the caches may do with one request."""

    read: bool = True
    store: bool = True
    refresh: bool = False
    raw: str = ""

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> CacheDirectives:
        """Parse the request's `x-proxy-cache` header (absent: read and store)."""
        raw = headers.get(HEADER, "")
        tokens = {t.strip().lower() for t in raw.split(",")}
        no_store = "no-store" in tokens
        refresh = "refresh" in tokens
        no_cache = "no-cache" in tokens or refresh
        return cls(read=not (no_store or no_cache), store=not no_store, refresh=refresh,
                   raw=raw.strip())


def unstorable(ctx: Context, reply: Reply, completion: Any) -> str | None:
    """Why no cache may store this answer, or None: only complete single-choice answers
    that the upstream gave for the model that was asked (never a fallback's)."""
    if reply.stage != "upstream":
        return f"answered by {reply.stage}"
    if not reply.ok or reply.error:
        return f"not a complete answer (status {reply.status}, {reply.error or 'no error'})"
    if reply.is_stream and not reply.completed:
        return "stream ended before [DONE]"
    if any(d.stage == "upstream" and d.action == "fallback" for d in ctx.trace):
        return "answered by a fallback model"
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or len(choices) != 1:
        return "not a single-choice chat.completion"
    return None
