"""Run a callback once when a streamed reply ends, however it ends.

The callback runs when the stream is exhausted, when reading it fails, when its
reader closes it (`aclose()`, even before the first chunk), or, as a last resort,
when the stream is dropped without being closed (an outer stage's generator that
was closed without closing ours). It is shielded: a cancellation that arrives
while it runs (shutdown) does not stop a settle half-way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from proxy.pipeline.core import Reply

log = logging.getLogger("proxy.pipeline")
OnEnd = Callable[[], Awaitable[None]]


class _EndingStream:
    """An async iterator over `chunks` that calls `on_end` exactly once at the end."""

    def __init__(self, chunks: AsyncIterator[bytes], on_end: OnEnd) -> None:
        self._chunks = chunks
        self._on_end: OnEnd | None = on_end

    def __aiter__(self) -> _EndingStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            await self._end()
            raise

    async def aclose(self) -> None:
        """Close the inner stream, then run the callback."""
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            await self._end()

    async def _end(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            await asyncio.shield(on_end())  # a cancellation here must not lose the settle

    def __del__(self) -> None:
        if self._on_end is not None:
            try:
                asyncio.get_running_loop().create_task(self._end())
            except RuntimeError:
                log.warning("a stream was dropped outside the event loop; its end callback "
                            "did not run")


def call_when_stream_ends(reply: Reply, on_end: OnEnd) -> None:
    """Wrap `reply.chunks` so `on_end` runs once when the stream ends."""
    assert reply.chunks is not None
    reply.chunks = _EndingStream(reply.chunks, on_end)
