"""The assistant message a run writes, created at its first text and closed with the run."""

from __future__ import annotations

from typing import Any

from proxy.store.threads_store import ThreadStore
from proxy.threads.events import RunEvents, text_delta
from proxy.threads.objects import message_object, now, step_object, text_content

_MESSAGE_INCOMPLETE_REASONS = {"incomplete": "max_tokens", "cancelled": "run_cancelled",
                               "failed": "run_failed", "expired": "run_expired"}
_STEP_STATUS = {"completed": "completed", "incomplete": "completed", "cancelled": "cancelled",
                "failed": "failed", "expired": "expired"}


class MessageOutput:
    """One assistant message and its message_creation step, fed text piece by piece."""

    def __init__(self, store: ThreadStore, owner: str, run: dict[str, Any],
                 events: RunEvents) -> None:
        self.store, self.owner, self.run, self.events = store, owner, run, events
        self.message: dict[str, Any] | None = None
        self.step: dict[str, Any] | None = None
        self.parts: list[str] = []
        self.finished = False

    @property
    def started(self) -> bool:
        """True once the message exists."""
        return self.message is not None

    async def ensure_started(self) -> None:
        """Create the (empty, in-progress) message and its step if not yet done."""
        if self.message is not None:
            return
        run = self.run
        message = message_object(run["thread_id"], "assistant", [], run_id=run["id"],
                                 assistant_id=run["assistant_id"], status="in_progress")
        step = step_object(run, {"type": "message_creation",
                                 "message_creation": {"message_id": message["id"]}})
        await self.store.insert(self.owner, "step", step, parent=run["id"],
                                thread_id=run["thread_id"])
        await self.store.insert(self.owner, "message", message, parent=run["thread_id"],
                                thread_id=run["thread_id"])
        self.message, self.step = message, step
        self.events.emit("thread.run.step.created", step)
        self.events.emit("thread.run.step.in_progress", step)
        self.events.emit("thread.message.created", message)
        self.events.emit("thread.message.in_progress", message)

    async def text(self, piece: str) -> None:
        """Append text (emitted as a `thread.message.delta`)."""
        await self.ensure_started()
        assert self.message is not None
        self.parts.append(piece)
        self.events.emit("thread.message.delta", text_delta(self.message["id"], piece))

    async def finish(self, run_status: str, usage: dict[str, int] | None) -> None:
        """Store the full message and close it and its step as the run's status says."""
        assert self.message is not None and self.step is not None
        self.finished = True
        stamp = now()
        message, step = self.message, self.step
        message["content"] = [text_content("".join(self.parts))]
        reason = _MESSAGE_INCOMPLETE_REASONS.get(run_status)
        if reason is None:
            message.update(status="completed", completed_at=stamp)
        else:
            message.update(status="incomplete", incomplete_at=stamp,
                           incomplete_details={"reason": reason})
        step_status = _STEP_STATUS.get(run_status, "completed")
        step["status"] = step_status
        step[f"{step_status}_at"] = stamp
        step["usage"] = usage
        await self.store.update(self.owner, "message", message)
        await self.store.update(self.owner, "step", step)
        self.events.emit("thread.message.completed" if reason is None
                         else "thread.message.incomplete", message)
        self.events.emit("thread.run.step.completed" if step_status == "completed"
                         else f"thread.run.step.{step_status}", step)
