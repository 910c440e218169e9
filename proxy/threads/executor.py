"""One turn of a run: build the chat request, send it through the pipeline, store the outcome.

A turn ends the run (completed, incomplete, failed, cancelled) or pauses it
waiting for tool outputs (requires_action); `submit_tool_outputs` starts the
next turn. Every status change is stored and, for streaming runs, emitted as
OpenAI's assistant events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.auth import Tenant
from proxy.errors import ProxyError
from proxy.pipeline.core import Context, Reply
from proxy.pipeline.dispatch import dispatch, record
from proxy.pipeline.replies import StreamAssembler
from proxy.threads.events import RunEvents, tool_calls_delta
from proxy.threads.host import TurnHost
from proxy.threads.objects import add_usage, now, step_object, usage_object
from proxy.threads.output import MessageOutput
from proxy.threads.prompt import build_chat_request
from proxy.upstream.sse import event_data, split_events

log = logging.getLogger("proxy.threads")


class RunFailed(Exception):
    """The turn cannot finish: the run fails with OpenAI's `last_error` code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def error_code(status: int) -> str:
    """The run `last_error.code` for an HTTP status."""
    if status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if 400 <= status < 500 else "server_error"


def _error_message(reply: Reply) -> str:
    try:
        return str(orjson.loads(reply.body or b"{}")["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"The model request failed with status {reply.status}."


class RunTurn:
    """Executes the next turn of one run (in a background task)."""

    def __init__(self, runtime: TurnHost, tenant: Tenant, run: dict[str, Any],
                 events: RunEvents | None, request_id: str, headers: Mapping[str, str]) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.tenant = tenant
        self.owner = tenant.name
        self.run = run
        self.events = events or RunEvents()
        if events is None:
            self.events.detached = True
        self.request_id = request_id
        self.headers = headers
        self.output = MessageOutput(self.store, self.owner, run, self.events)
        self.task: asyncio.Task[None] | None = None
        self.started = False
        self.cancel_requested = False

    def cancel(self) -> None:
        """Stop the turn: the run ends cancelled (even if the task has not begun yet)."""
        self.cancel_requested = True
        if self.started and self.task is not None:
            self.task.cancel()

    async def execute(self) -> None:
        """Run the turn; never raises except for cancellation (after recording it)."""
        self.started = True
        try:
            if self.cancel_requested:
                raise asyncio.CancelledError
            await self._turn()
        except RunFailed as exc:
            await self._finish("failed", last_error={"code": exc.code, "message": exc.message})
        except asyncio.CancelledError:
            if self.runtime.closing:
                await self._finish("failed", last_error={
                    "code": "server_error",
                    "message": "The proxy shut down before the run finished; create a new run."})
            else:
                await self._finish("cancelled")
            raise
        except Exception:
            log.exception("run %s failed", self.run["id"])
            await self._finish("failed", last_error={
                "code": "server_error",
                "message": f"The proxy had an internal error running this run "
                           f"(request id {self.request_id})."})
        finally:
            self.events.close()

    async def _save(self) -> None:
        await self.store.update(self.owner, "run", self.run)
        self.events.run_status(self.run)

    async def _turn(self) -> None:
        run = self.run
        run["status"] = "in_progress"
        run["started_at"] = run["started_at"] or now()
        await self._save()
        thread = await self.store.get(self.owner, "thread", run["thread_id"])
        if thread is None:
            raise RunFailed("server_error", "The thread was deleted during the run.")
        messages = await self.runtime.records.all_items(self.owner, "message", run["thread_id"])
        steps = await self.runtime.records.all_items(self.owner, "step", run["id"])
        budget = None
        if run["max_completion_tokens"]:
            budget = run["max_completion_tokens"] - ((run["usage"] or {}).get(
                "completion_tokens") or 0)
            if budget <= 0:
                await self._finish("incomplete", reason="max_completion_tokens")
                return
        request = await asyncio.to_thread(build_chat_request, run, messages, steps,
                                          stream=not self.events.detached,
                                          completion_budget=budget)
        if request.over_prompt_limit:
            await self._finish("incomplete", reason="max_prompt_tokens")
            return
        ctx = Context(request_id=self.request_id, tenant=self.tenant, body=request.body,
                      raw=None, headers=self.headers, source="thread")
        ctx.thread = request.thread_info
        ctx.prior_summary = thread.get("_trim_summary")
        try:
            reply = await dispatch(self.runtime.pipeline.current, ctx, self.runtime.resources)
        except ProxyError as exc:
            raise RunFailed(error_code(exc.status), exc.message) from None
        if not reply.ok:
            raise RunFailed(error_code(reply.status), _error_message(reply))
        completion = await (self._consume(ctx, reply) if reply.is_stream
                            else self._whole(reply))
        if reply.stage == "upstream" and reply.model:  # "the model used for this run"
            run.setdefault("_requested_model", run["model"])  # what every turn asks for
            run["model"] = reply.model
        await self._keep_summary(thread, ctx)
        await self._conclude(completion, reply)

    async def _whole(self, reply: Reply) -> dict[str, Any]:
        completion = reply.json()
        content = ((completion.get("choices") or [{}])[0].get("message") or {}).get("content")
        if content:
            await self.output.text(content)
        return dict(completion)

    async def _consume(self, ctx: Context, reply: Reply) -> dict[str, Any]:
        """Relay a streamed reply as message deltas while assembling the completion."""
        assembler = StreamAssembler()
        buffer, status, error = b"", reply.status, None
        assert reply.chunks is not None
        try:
            async for raw in reply.chunks:
                events, buffer = split_events(buffer + raw)
                for item in events:
                    data = event_data(item)
                    if data is None or data.strip() == b"[DONE]":
                        continue
                    chunk = orjson.loads(data)
                    if chunk.get("error"):
                        error = str((chunk["error"] or {}).get("message") or chunk["error"])
                        continue
                    assembler.feed_chunk(chunk)
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece and choice.get("index", 0) == 0:
                            await self.output.text(piece)
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            await reply.chunks.aclose()  # type: ignore[attr-defined]
            record(self.runtime.resources, ctx, reply, status=status)
        if error or reply.error:
            raise RunFailed("server_error", error or reply.error or "The model stream broke off.")
        return assembler.completion()

    async def _keep_summary(self, thread: dict[str, Any], ctx: Context) -> None:
        """Store the trim stage's summary of older turns on the thread, for the next run."""
        summary = ctx.new_summary
        if summary and summary != thread.get("_trim_summary"):
            thread["_trim_summary"] = summary
            await self.store.update(self.owner, "thread", thread)

    async def _conclude(self, completion: dict[str, Any], reply: Reply) -> None:
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        usage = completion.get("usage") or {}
        if reply.usage is not None and not usage:
            usage = {"prompt_tokens": reply.usage.prompt_tokens,
                     "completion_tokens": reply.usage.completion_tokens}
        turn_usage = usage_object(int(usage.get("prompt_tokens") or 0),
                                  int(usage.get("completion_tokens") or 0))
        self.run["usage"] = add_usage(self.run["usage"], turn_usage)
        current = await self.store.get(self.owner, "run", self.run["id"])
        if current is None:
            return
        if current["status"] in ("cancelling", "cancelled"):
            await self._finish("cancelled")
            return
        calls = message.get("tool_calls") or []
        if calls:
            if self.output.started:
                await self.output.finish("completed", None)
            await self._require_action(calls, turn_usage)
        elif choice.get("finish_reason") == "length":
            await self._finish("incomplete", reason="max_completion_tokens", usage=turn_usage)
        else:
            await self.output.ensure_started()
            await self._finish("completed", usage=turn_usage)

    async def _require_action(self, calls: list[dict[str, Any]], usage: dict[str, int]) -> None:
        required = [{"id": c["id"], "type": "function",
                     "function": {"name": c["function"]["name"],
                                  "arguments": c["function"]["arguments"]}} for c in calls]
        step = step_object(self.run, {"type": "tool_calls", "tool_calls": []})
        await self.store.insert(self.owner, "step", step, parent=self.run["id"],
                                thread_id=self.run["thread_id"])
        self.events.emit("thread.run.step.created", step)
        self.events.emit("thread.run.step.in_progress", step)
        step["step_details"]["tool_calls"] = [
            {**call, "function": {**call["function"], "output": None}} for call in required]
        step["usage"] = usage
        await self.store.update(self.owner, "step", step)
        self.events.emit("thread.run.step.delta",
                         tool_calls_delta(step["id"], step["step_details"]["tool_calls"]))
        self.run["status"] = "requires_action"
        self.run["required_action"] = {"type": "submit_tool_outputs",
                                       "submit_tool_outputs": {"tool_calls": required}}
        await self._save()

    async def _finish(self, status: str, *, reason: str | None = None,
                      last_error: dict[str, str] | None = None,
                      usage: dict[str, int] | None = None) -> None:
        """End the run with `status`, closing its open message and step."""
        run = self.run
        if self.output.started and not self.output.finished:
            await self.output.finish(status, usage)
        stamp = now()
        run["status"] = status
        run["required_action"] = None
        if status == "completed":
            run["completed_at"] = stamp
        elif status == "cancelled":
            run["cancelled_at"] = stamp
        elif status == "failed":
            run["failed_at"] = stamp
            run["last_error"] = last_error
        elif status == "incomplete":
            run["incomplete_details"] = {"reason": reason}
        run["usage"] = run["usage"] or usage_object(0, 0)
        await self._save()
        await self.store.release(self.owner, run["thread_id"], run["id"])
