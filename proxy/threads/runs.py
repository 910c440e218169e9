"""Run lifecycle: create (and create-and-run), retrieve with expiry, tool outputs, cancel.

queued -> in_progress -> completed | requires_action | incomplete | failed, and
cancelling -> cancelled, or expired when a run (e.g. one waiting for tool
outputs) outlives `expires_at`. A thread has at most one active run, enforced
by the store's thread lock so it holds across replicas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.auth import Tenant
from proxy.errors import InvalidRequest, PermissionDenied
from proxy.threads import params
from proxy.threads.events import RunEvents
from proxy.threads.host import TurnHost
from proxy.threads.objects import ACTIVE_RUN_STATUSES, RUN_TTL_SECONDS, now, public, run_object


class Runs:
    """Starts, continues, stops and reports runs."""

    def __init__(self, runtime: TurnHost) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.records = runtime.records

    async def _prepare(self, tenant: Tenant, body: dict[str, Any]
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
        fields = params.run_fields(body)
        assistant = await self.records.require(tenant.name, "assistant", fields["assistant_id"])
        model = fields["model"] or assistant["model"]
        if not tenant.may_use(model):
            raise PermissionDenied(f"This key may not use the model '{model}'.", param="model",
                                   code="model_not_allowed")
        return fields, assistant

    async def create(self, tenant: Tenant, thread_id: str, body: dict[str, Any],
                     request_id: str, headers: Mapping[str, str]
                     ) -> tuple[dict[str, Any], RunEvents | None]:
        """Start a run on a thread: the queued run, and its events when streaming."""
        fields, assistant = await self._prepare(tenant, body)
        await self.records.require(tenant.name, "thread", thread_id)
        return await self._start(tenant, thread_id, assistant, fields, request_id, headers, None)

    async def create_thread_and_run(self, tenant: Tenant, body: dict[str, Any],
                                    request_id: str, headers: Mapping[str, str]
                                    ) -> tuple[dict[str, Any], RunEvents | None]:
        """Create a thread (from body.thread) and start a run on it."""
        fields, assistant = await self._prepare(tenant, body)
        thread_body = params.typed(body, "thread", dict) or {}
        thread = await self.records.create_thread(tenant.name, thread_body)
        return await self._start(tenant, thread["id"], assistant, fields, request_id, headers,
                                 thread)

    async def _start(self, tenant: Tenant, thread_id: str, assistant: dict[str, Any],
                     fields: dict[str, Any], request_id: str, headers: Mapping[str, str],
                     new_thread: dict[str, Any] | None
                     ) -> tuple[dict[str, Any], RunEvents | None]:
        owner = tenant.name
        run = run_object(thread_id, assistant, fields)
        await self._lock(owner, thread_id, run["id"])
        for message in fields["additional_messages"]:
            await self.records.add_message(owner, thread_id, message)
        await self.store.insert(owner, "run", run, parent=thread_id, thread_id=thread_id)
        events = RunEvents() if fields["stream"] else None
        if events is not None:
            if new_thread is not None:
                events.emit("thread.created", new_thread)
            events.emit("thread.run.created", run)
            events.emit("thread.run.queued", run)
        created = public(run)
        self.runtime.start_turn(tenant, run, events, request_id, headers)
        return created, events

    async def _lock(self, owner: str, thread_id: str, run_id: str) -> None:
        for _ in range(2):
            holder = await self.store.claim(owner, thread_id, run_id, RUN_TTL_SECONDS)
            if holder is None:
                return
            if await self._is_active(owner, holder):
                break
            await self.store.release(owner, thread_id, holder)  # stale: its run has ended
        raise InvalidRequest(f"Thread {thread_id} already has an active run {holder}.",
                             code="thread_locked")

    async def _is_active(self, owner: str, run_id: str) -> bool:
        run = await self.store.get(owner, "run", run_id)
        return run is not None and (await self._expire(owner, run))["status"] in \
            ACTIVE_RUN_STATUSES

    async def refuse_if_active(self, owner: str, thread_id: str) -> None:
        """400 when the thread has an active run (messages cannot be added then)."""
        holder = await self.store.holder(owner, thread_id)
        if holder is not None and await self._is_active(owner, holder):
            raise InvalidRequest(f"Can't add messages to {thread_id} while a run {holder} "
                                 "is active.", code="thread_locked")

    async def _expire(self, owner: str, run: dict[str, Any]) -> dict[str, Any]:
        """Mark an active run past `expires_at` (and not executing here) expired."""
        if (run["status"] in ACTIVE_RUN_STATUSES and now() > run["expires_at"]
                and run["id"] not in self.runtime.turns):
            run.update(status="expired", required_action=None)
            await self.store.update(owner, "run", run)
            await self.store.release(owner, run["thread_id"], run["id"])
        return run

    async def _run(self, owner: str, thread_id: str, run_id: str) -> dict[str, Any]:
        run = await self.records.require(owner, "run", run_id, ("thread_id", thread_id))
        return await self._expire(owner, run)

    async def retrieve(self, owner: str, thread_id: str, run_id: str) -> dict[str, Any]:
        """The run (expired first if it outlived `expires_at`)."""
        return public(await self._run(owner, thread_id, run_id))

    async def modify(self, owner: str, thread_id: str, run_id: str,
                     body: dict[str, Any]) -> dict[str, Any]:
        """The run with new metadata."""
        fields = {"metadata": params.metadata(body) or {}} if "metadata" in body else {}
        run = await self._run(owner, thread_id, run_id)
        run.update(fields)
        await self.store.update(owner, "run", run)
        return public(run)

    async def _open_tool_step(self, owner: str, run_id: str) -> dict[str, Any] | None:
        steps = await self.records.all_items(owner, "step", run_id)
        return next((s for s in reversed(steps) if s["type"] == "tool_calls"
                     and s["status"] == "in_progress"), None)

    async def submit_tool_outputs(self, tenant: Tenant, thread_id: str, run_id: str,
                                  body: dict[str, Any], request_id: str,
                                  headers: Mapping[str, str]
                                  ) -> tuple[dict[str, Any], RunEvents | None]:
        """Give a run waiting in requires_action its tool outputs and continue it."""
        outputs = params.tool_outputs(body)
        stream = bool(params.typed(body, "stream", bool))
        owner = tenant.name
        run = await self._run(owner, thread_id, run_id)
        if run["status"] != "requires_action":
            raise InvalidRequest(f"Runs in status \"{run['status']}\" do not accept tool "
                                 "outputs.", param="run_id", code="invalid_run_status")
        wanted = {c["id"] for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]}
        if set(outputs) != wanted:
            raise InvalidRequest(
                f"Expected tool outputs for call ids {sorted(wanted)}, got {sorted(outputs)}.",
                param="tool_outputs", code="invalid_tool_outputs")
        step = await self._open_tool_step(owner, run_id)
        events = RunEvents() if stream else None
        if step is not None:
            for call in step["step_details"]["tool_calls"]:
                call["function"]["output"] = outputs.get(call["id"])
            step.update(status="completed", completed_at=now())
            await self.store.update(owner, "step", step)
            if events is not None:
                events.emit("thread.run.step.completed", step)
        run.update(status="queued", required_action=None)
        await self.store.update(owner, "run", run)
        await self.store.claim(owner, thread_id, run_id, RUN_TTL_SECONDS)
        if events is not None:
            events.emit("thread.run.queued", run)
        queued = public(run)
        self.runtime.start_turn(tenant, run, events, request_id, headers)
        return queued, events

    async def cancel(self, owner: str, thread_id: str, run_id: str) -> dict[str, Any]:
        """Cancel a run: at once when it waits for tool outputs, else via `cancelling`
        (the replica executing it ends it as cancelled)."""
        run = await self._run(owner, thread_id, run_id)
        if run["status"] not in ACTIVE_RUN_STATUSES or run["status"] == "cancelling":
            raise InvalidRequest(f"Cannot cancel run with status '{run['status']}'.",
                                 param="run_id", code="invalid_run_status")
        if run["status"] == "requires_action":
            step = await self._open_tool_step(owner, run_id)
            if step is not None:
                step.update(status="cancelled", cancelled_at=now())
                await self.store.update(owner, "step", step)
            run.update(status="cancelled", cancelled_at=now(), required_action=None)
            await self.store.update(owner, "run", run)
            await self.store.release(owner, thread_id, run_id)
            return public(run)
        run["status"] = "cancelling"
        await self.store.update(owner, "run", run)
        self.runtime.cancel_turn(run_id)
        return public(run)
