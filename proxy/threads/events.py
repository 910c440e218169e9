"""Assistant stream events: OpenAI's `event: NAME` / `data: JSON` frames and their queue.

A run executes in a background task; when the client asked for `stream`, the
task writes events into a `RunEvents` queue that the HTTP handler drains. If the
client goes away the run goes on and the events are dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy.threads.objects import public

DONE_FRAME = b"event: done\ndata: [DONE]\n\n"
RUN_STATUS_EVENTS = {
    "queued": "thread.run.queued", "in_progress": "thread.run.in_progress",
    "requires_action": "thread.run.requires_action", "cancelling": "thread.run.cancelling",
    "cancelled": "thread.run.cancelled", "failed": "thread.run.failed",
    "completed": "thread.run.completed", "incomplete": "thread.run.incomplete",
    "expired": "thread.run.expired",
}


def frame(name: str, data: dict[str, Any]) -> bytes:
    """One SSE event as OpenAI sends assistant events."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def text_delta(message_id: str, text: str) -> dict[str, Any]:
    """The `thread.message.delta` payload adding `text` to the first text block."""
    return {"id": message_id, "object": "thread.message.delta",
            "delta": {"content": [{"index": 0, "type": "text",
                                   "text": {"value": text, "annotations": []}}]}}


def tool_calls_delta(step_id: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The `thread.run.step.delta` payload announcing a step's tool calls."""
    return {"id": step_id, "object": "thread.run.step.delta",
            "delta": {"step_details": {"type": "tool_calls", "tool_calls": [
                {"index": i, **call} for i, call in enumerate(calls)]}}}


class RunEvents:
    """A queue of frames from a run's task to one streaming response (or to nobody)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.detached = False

    def emit(self, name: str, data: dict[str, Any]) -> None:
        """Queue one event (its object without the proxy's "_" fields)."""
        if not self.detached:
            self._queue.put_nowait(frame(name, public(data)))

    def run_status(self, run: dict[str, Any]) -> None:
        """Queue the event that announces the run's current status."""
        self.emit(RUN_STATUS_EVENTS[run["status"]], run)

    def close(self) -> None:
        """No more events: the stream ends with `done`."""
        self._queue.put_nowait(None)

    async def frames(self) -> AsyncIterator[bytes]:
        """The frames, then the `done` frame; stop reading and the rest is dropped."""
        try:
            while (item := await self._queue.get()) is not None:
                yield item
            yield DONE_FRAME
        finally:
            self.detached = True
