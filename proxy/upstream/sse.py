"""Server-sent-event framing shared by the upstream client, caches and pattern replies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def event(obj: Any) -> bytes:
    """One SSE `data:` event carrying a JSON object."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete events (each ending in a blank line) and the unfinished rest."""
    buffer = buffer.replace(b"\r\n", b"\n")
    *complete, rest = buffer.split(b"\n\n")
    return [e + b"\n\n" for e in complete if e.strip()], rest


def event_data(raw_event: bytes) -> bytes | None:
    """The payload of an event's `data:` lines (None for comments / keep-alives)."""
    lines = [ln[5:].lstrip() for ln in raw_event.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


async def from_list(events: Iterable[bytes]) -> AsyncIterator[bytes]:
    """An async iterator over prepared events (for free answers)."""
    for item in events:
        yield item
