"""`/v1/assistants` and `/v1/threads` (messages, runs, steps): HTTP in and out only.

The Assistants API is served by the proxy itself (see proxy/threads/); these
handlers parse the request, call the threads runtime for the caller's key,
and answer JSON or the run's assistant event stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, overload

import orjson
from aiohttp import web

from proxy.api.body import read_body
from proxy.api.request_keys import request_id, tenant_of
from proxy.api.validate import parse_json_object
from proxy.threads import params
from proxy.threads.events import RunEvents
from proxy.threads.objects import public
from proxy.threads.records import not_found
from proxy.threads.runtime import THREADS, ThreadsRuntime

POLL_AFTER_MS = "100"  # `openai-poll-after-ms`: how often the SDK's *_and_poll helpers look
JsonAction = Callable[[web.Request, ThreadsRuntime, str], Awaitable[dict[str, Any]]]
RunAction = Callable[[web.Request, ThreadsRuntime],
                     Awaitable[tuple[dict[str, Any], RunEvents | None]]]


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request)
    return parse_json_object(raw) if raw.strip() else {}


def _json(obj: Any, request: web.Request, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json",
                        headers={"x-request-id": request_id(request), **(headers or {})})


def json_handler(action: JsonAction) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler answering `action(request, runtime, owner)` as JSON."""
    async def handler(request: web.Request) -> web.Response:
        runtime = request.app[THREADS]
        return _json(await action(request, runtime, tenant_of(request).name), request)
    handler.__doc__ = action.__doc__  # what /openapi.json says of the route
    return handler


def run_handler(action: RunAction) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler answering the run `action` started: JSON, or its event stream."""
    async def handler(request: web.Request) -> web.StreamResponse:
        runtime = request.app[THREADS]
        run, events = await action(request, runtime)
        if events is None:
            return _json(run, request, {"openai-poll-after-ms": POLL_AFTER_MS})
        return await _stream(request, events)
    handler.__doc__ = action.__doc__  # what /openapi.json says of the route
    return handler


async def _stream(request: web.Request, events: RunEvents) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache",
                                       "x-request-id": request_id(request)})
    frames = events.frames()
    try:  # if the client goes away the run goes on; its events are dropped
        await resp.prepare(request)
        async for item in frames:
            await resp.write(item)
        await resp.write_eof()
    finally:
        await frames.aclose()  # type: ignore[attr-defined]
    return resp


@overload
def _ids(request: web.Request, a: str, /) -> tuple[str]: ...
@overload
def _ids(request: web.Request, a: str, b: str, /) -> tuple[str, str]: ...
@overload
def _ids(request: web.Request, a: str, b: str, c: str, /) -> tuple[str, str, str]: ...
def _ids(request: web.Request, *names: str) -> tuple[str, ...]:
    """The path parameters called `names`, in that order."""
    return tuple(request.match_info[name] for name in names)


# --- assistants, threads, messages -----------------------------------------------------

async def create_assistant(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Create assistant (the Assistants API, served by the proxy)."""
    return await rt.records.create_assistant(owner, await _body(request))


async def list_assistants(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """List assistants (the Assistants API, served by the proxy)."""
    return await rt.records.listing(owner, "assistant", "", params.list_query(request.query))


async def retrieve_assistant(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Retrieve assistant (the Assistants API, served by the proxy)."""
    return public(await rt.records.require(owner, "assistant", *_ids(request, "assistant_id")))


async def modify_assistant(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Modify assistant (the Assistants API, served by the proxy)."""
    return await rt.records.modify_assistant(owner, *_ids(request, "assistant_id"),
                                             await _body(request))


async def delete_assistant(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Delete assistant (the Assistants API, served by the proxy)."""
    return await rt.records.delete_assistant(owner, *_ids(request, "assistant_id"))


async def create_thread(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Create thread (the Assistants API, served by the proxy)."""
    return await rt.records.create_thread(owner, await _body(request))


async def retrieve_thread(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Retrieve thread (the Assistants API, served by the proxy)."""
    return public(await rt.records.require(owner, "thread", *_ids(request, "thread_id")))


async def modify_thread(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Modify thread (the Assistants API, served by the proxy)."""
    return await rt.records.modify_thread(owner, *_ids(request, "thread_id"),
                                          await _body(request))


async def delete_thread(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Delete thread (the Assistants API, served by the proxy)."""
    return await rt.records.delete_thread(owner, *_ids(request, "thread_id"))


async def create_message(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Create message (the Assistants API, served by the proxy)."""
    fields = params.message(await _body(request))
    (thread_id,) = _ids(request, "thread_id")
    await rt.records.require(owner, "thread", thread_id)
    await rt.runs.refuse_if_active(owner, thread_id)
    return await rt.records.add_message(owner, thread_id, fields)


async def list_messages(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """List messages (the Assistants API, served by the proxy)."""
    (thread_id,) = _ids(request, "thread_id")
    query = params.list_query(request.query)
    await rt.records.require(owner, "thread", thread_id)
    run_id = request.query.get("run_id")
    return await rt.records.listing(owner, "message", thread_id, query,
                                    ("run_id", run_id) if run_id else None)


async def retrieve_message(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Retrieve message (the Assistants API, served by the proxy)."""
    thread_id, message_id = _ids(request, "thread_id", "message_id")
    return public(await rt.records.require(owner, "message", message_id,
                                           ("thread_id", thread_id)))


async def modify_message(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Modify message (the Assistants API, served by the proxy)."""
    return await rt.records.modify_message(owner, *_ids(request, "thread_id", "message_id"),
                                           await _body(request))


async def delete_message(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Delete message (the Assistants API, served by the proxy)."""
    return await rt.records.delete_message(owner, *_ids(request, "thread_id", "message_id"))


# --- runs and steps ---------------------------------------------------------------------

async def create_run(request: web.Request, rt: ThreadsRuntime
                     ) -> tuple[dict[str, Any], RunEvents | None]:
    """Create run (the Assistants API, served by the proxy)."""
    return await rt.runs.create(tenant_of(request), *_ids(request, "thread_id"),
                                await _body(request), request_id(request), request.headers)


async def create_thread_and_run(request: web.Request, rt: ThreadsRuntime
                                ) -> tuple[dict[str, Any], RunEvents | None]:
    """Create thread, then start a run on it (the Assistants API, served by the proxy)."""
    return await rt.runs.create_thread_and_run(tenant_of(request), await _body(request),
                                               request_id(request), request.headers)


async def submit_tool_outputs(request: web.Request, rt: ThreadsRuntime
                              ) -> tuple[dict[str, Any], RunEvents | None]:
    """Submit tool outputs (the Assistants API, served by the proxy)."""
    return await rt.runs.submit_tool_outputs(
        tenant_of(request), *_ids(request, "thread_id", "run_id"), await _body(request),
        request_id(request), request.headers)


async def retrieve_run(request: web.Request, rt: ThreadsRuntime
                       ) -> tuple[dict[str, Any], RunEvents | None]:
    """Retrieve run (the Assistants API, served by the proxy)."""
    return await rt.runs.retrieve(tenant_of(request).name,
                                  *_ids(request, "thread_id", "run_id")), None


async def list_runs(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """List runs (the Assistants API, served by the proxy)."""
    (thread_id,) = _ids(request, "thread_id")
    query = params.list_query(request.query)
    await rt.records.require(owner, "thread", thread_id)
    return await rt.records.listing(owner, "run", thread_id, query)


async def modify_run(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Modify run (the Assistants API, served by the proxy)."""
    return await rt.runs.modify(owner, *_ids(request, "thread_id", "run_id"),
                                await _body(request))


async def cancel_run(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Cancel run (the Assistants API, served by the proxy)."""
    return await rt.runs.cancel(owner, *_ids(request, "thread_id", "run_id"))


async def list_steps(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """List steps (the Assistants API, served by the proxy)."""
    thread_id, run_id = _ids(request, "thread_id", "run_id")
    query = params.list_query(request.query)
    await rt.records.require(owner, "run", run_id, ("thread_id", thread_id))
    return await rt.records.listing(owner, "step", run_id, query)


async def retrieve_step(request: web.Request, rt: ThreadsRuntime, owner: str) -> Any:
    """Retrieve step (the Assistants API, served by the proxy)."""
    thread_id, run_id, step_id = _ids(request, "thread_id", "run_id", "step_id")
    step = await rt.records.require(owner, "step", step_id, ("run_id", run_id))
    if step["thread_id"] != thread_id:
        raise not_found("step", step_id)
    return public(step)


_JSON_ROUTES: list[tuple[str, str, JsonAction]] = [
    ("POST", "/v1/assistants", create_assistant),
    ("GET", "/v1/assistants", list_assistants),
    ("GET", "/v1/assistants/{assistant_id}", retrieve_assistant),
    ("POST", "/v1/assistants/{assistant_id}", modify_assistant),
    ("DELETE", "/v1/assistants/{assistant_id}", delete_assistant),
    ("POST", "/v1/threads", create_thread),
    ("GET", "/v1/threads/{thread_id}", retrieve_thread),
    ("POST", "/v1/threads/{thread_id}", modify_thread),
    ("DELETE", "/v1/threads/{thread_id}", delete_thread),
    ("POST", "/v1/threads/{thread_id}/messages", create_message),
    ("GET", "/v1/threads/{thread_id}/messages", list_messages),
    ("GET", "/v1/threads/{thread_id}/messages/{message_id}", retrieve_message),
    ("POST", "/v1/threads/{thread_id}/messages/{message_id}", modify_message),
    ("DELETE", "/v1/threads/{thread_id}/messages/{message_id}", delete_message),
    ("GET", "/v1/threads/{thread_id}/runs", list_runs),
    ("POST", "/v1/threads/{thread_id}/runs/{run_id}", modify_run),
    ("POST", "/v1/threads/{thread_id}/runs/{run_id}/cancel", cancel_run),
    ("GET", "/v1/threads/{thread_id}/runs/{run_id}/steps", list_steps),
    ("GET", "/v1/threads/{thread_id}/runs/{run_id}/steps/{step_id}", retrieve_step),
]
_RUN_ROUTES: list[tuple[str, str, RunAction]] = [
    ("POST", "/v1/threads/runs", create_thread_and_run),
    ("POST", "/v1/threads/{thread_id}/runs", create_run),
    ("GET", "/v1/threads/{thread_id}/runs/{run_id}", retrieve_run),
    ("POST", "/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", submit_tool_outputs),
]


def add_routes(app: web.Application) -> None:
    """Register the Assistants API routes."""
    for method, path, run_action in _RUN_ROUTES:  # /v1/threads/runs before /v1/threads/{id}
        app.router.add_route(method, path, run_handler(run_action))
    for method, path, action in _JSON_ROUTES:
        app.router.add_route(method, path, json_handler(action))
