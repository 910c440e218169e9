"""An OpenAI-shaped fake upstream for demo mode, tests and benchmarks.

It answers `/v1/chat/completions` (streamed or not, n choices, tool calls when
tools are given and asked for, usage counted with tiktoken, `cached_tokens` from a
simulated prompt cache, see fake_cache.py) and `/v1/models`, plus embeddings,
moderations, files, batches, audio and responses (proxy/upstream/fake_api.py) for the
pass-through; it can be slowed (time to first token, tokens per second) and
told to fail (see FAULT_KINDS: 500, 429 with Retry-After, 400, 401, a connection
reset, a first byte that never comes, a stream that stalls or is cut mid-way, a malformed
JSON body, a malformed SSE event) or to ignore `stream_options.include_usage` (as some
OpenAI-compatible servers do) or to open streams with padding comments (to observe
back-pressure on `stream_bytes_sent`), and it records every request it received (`seen`:
method, path, query and headers; chat bodies in `received`) so tests
can assert what the proxy forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from proxy import tokens
from proxy.pipeline.replies import completion_to_events, make_completion
from proxy.upstream.fake_api import FakeAPI, json_body
from proxy.upstream.fake_cache import FakePromptCache
from proxy.upstream.sse import DONE

FAKE_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini")
FAULT_KINDS = ("500", "429", "hang", "cut", "400", "401", "reset", "stall", "bad_json",
               "bad_sse")
ERROR_FAULTS = ("500", "429", "400", "401")
# where a stream fault strikes: after this many events (role chunk, two content pieces)
STREAM_FAULT_AT = 3
PADDING_BYTES = 64 * 1024
MALFORMED_JSON = b'{"id": "chatcmpl-fake", "object": "chat.completion", "choices": [{"ind'
# a usage chunk cut short: the proxy parses usage chunks, so it must notice
MALFORMED_EVENT = b'data: {"id": "chatcmpl-fake", "choices": [], "usage": {"prompt\n\n'


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """One request the fake received: method, path, query string and headers."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class Fault:
    """A failure to inject: `kind` for the next `count` requests (-1: until cleared)."""

    kind: str
    count: int = 1
    model: str | None = None
    retry_after: float = 0.0


@dataclass
class FakeUpstream:
    """The fake's behaviour and what it has seen."""

    ttft: float = 0.0
    tokens_per_second: float = 0.0
    record: bool = True
    stream_usage: bool = True  # False: streams never carry a usage chunk
    faults: list[Fault] = field(default_factory=list)
    received: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10_000))
    received_headers: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=10_000))
    scripted: dict[str, str] = field(default_factory=dict)  # last-message phrase -> answer
    seen: deque[SeenRequest] = field(default_factory=lambda: deque(maxlen=10_000))
    files: dict[str, tuple[dict[str, Any], bytes]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    speech_paused: bool = False  # speech holds after its first piece while True
    prompt_cache: FakePromptCache = field(default_factory=FakePromptCache)
    padding_events: int = 0  # streams open with this many PADDING_BYTES SSE comments
    stream_bytes_sent: int = 0  # bytes of streamed answers written so far (all streams)
    _stopping: asyncio.Event | None = field(default=None, init=False, repr=False)

    def fail(self, kind: str, count: int = 1, model: str | None = None,
             retry_after: float = 0.0) -> None:
        """Make the next `count` requests (for `model`, if given) fail with `kind`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}")
        self.faults.append(Fault(kind, count, model, retry_after))

    def reset(self) -> None:
        """Forget faults, recorded requests and cached prompt prefixes."""
        self.faults.clear()
        self.received.clear()
        self.received_headers.clear()
        self.seen.clear()
        self.prompt_cache.clear()

    def calls(self, method: str, path: str) -> int:
        """How many `method path` requests the fake received."""
        return sum(1 for r in self.seen if r.method == method and r.path == path)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The fake's chat.completion for a request body."""
        return answer(body, self.scripted)

    async def fault_reply(self, fault: Fault | None,
                          request: web.Request | None = None) -> web.Response | None:
        """The error answer an error fault asks for (a hang waits here for an hour; a reset
        aborts `request`'s connection with a TCP RST and answers nothing)."""
        if fault is not None and fault.kind in ERROR_FAULTS:
            return _error(int(fault.kind), fault.retry_after)
        if fault is not None and fault.kind == "hang":
            await self.hold()
            return _error(500)  # to nobody by now: the proxy gave up long ago
        if fault is not None and fault.kind == "reset" and request is not None:
            _reset(request)
            return web.Response()  # written nowhere: the connection is gone
        return None

    def take_fault(self, model: str) -> Fault | None:
        """The fault that applies to the next request for `model`, used up by one."""
        if not self.faults:
            return None
        for fault in self.faults:
            if fault.model in (None, model):
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                return fault
        return None

    async def hold(self) -> None:
        """Wait until the fake's server shuts down (an hour at most): a hang or a stall that
        ends with the server instead of outliving its event loop."""
        if self._stopping is None:
            self._stopping = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), 3600)

    async def _end_holds(self, app: web.Application) -> None:
        if self._stopping is not None:
            self._stopping.set()
            self._stopping = None

    def app(self) -> web.Application:
        """The aiohttp application serving the fake API under /v1."""
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._note])
        app.on_shutdown.append(self._end_holds)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/_fake/faults", self.add_fault)
        app.router.add_get("/_fake/requests", self.list_requests)
        FakeAPI(self).add_routes(app)
        return app

    @web.middleware
    async def _note(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.record and request.path.startswith("/v1/"):
            self.seen.append(SeenRequest(request.method, request.path, request.query_string,
                                         dict(request.headers)))
        return await handler(request)

    async def models(self, request: web.Request) -> web.Response:
        """`GET /v1/models`."""
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
                for m in FAKE_MODELS]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def add_fault(self, request: web.Request) -> web.Response:
        """`POST /_fake/faults` {"kind", "count", "model", "retry_after"}."""
        spec = await request.json()
        self.fail(**spec)
        return web.json_response({"ok": True})

    async def list_requests(self, request: web.Request) -> web.Response:
        """`GET /_fake/requests`: bodies received, oldest first."""
        return web.json_response(list(self.received), dumps=_dumps)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/chat/completions`."""
        body = await json_body(request)
        if self.record:
            self.received.append(body)
            self.received_headers.append(dict(request.headers))
        model = str(body.get("model", ""))
        fault = self.take_fault(model)
        failure = await self.fault_reply(fault, request)
        if failure is not None:
            return failure
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400)
        completion = answer(body, self.scripted)
        usage = completion["usage"]
        usage["prompt_tokens_details"] = {
            "cached_tokens": min(self.prompt_cache.read_and_write(body), usage["prompt_tokens"]),
            "audio_tokens": 0}
        if self.ttft:
            await asyncio.sleep(self.ttft)
        if not body.get("stream"):
            data = MALFORMED_JSON if fault and fault.kind == "bad_json" else orjson.dumps(
                completion)
            if fault and fault.kind in ("cut", "stall"):
                return await _half_body(self, request, data, fault.kind)
            return web.Response(body=data, content_type="application/json")
        opts = body.get("stream_options") or {}
        events = completion_to_events(
            completion, include_usage=self.stream_usage and bool(opts.get("include_usage")),
            piece_chars=8)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        delay = 2.0 / self.tokens_per_second if self.tokens_per_second else 0.0
        padding = b": " + b"." * (PADDING_BYTES - 4) + b"\n\n"
        events = [padding] * self.padding_events + events
        for i, item in enumerate(events, -self.padding_events):
            if fault and i == STREAM_FAULT_AT:
                if fault.kind == "cut":
                    request.transport and request.transport.close()  # type: ignore[func-returns-value]
                    return resp
                if fault.kind == "stall":
                    await self.hold()
                    return resp
                if fault.kind == "bad_sse":
                    item = MALFORMED_EVENT
            if delay and item is not DONE:
                await asyncio.sleep(delay)
            try:
                await resp.write(item)
                self.stream_bytes_sent += len(item)
            except ConnectionResetError:  # the proxy let go (its client left): stop quietly
                return resp
        await resp.write_eof()
        return resp


async def _half_body(fake: FakeUpstream, request: web.Request, data: bytes,
                     kind: str) -> web.StreamResponse:
    """Send the first half of a JSON body (announced whole), then cut or stall."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(data)
    await resp.prepare(request)
    await resp.write(data[:len(data) // 2])
    if kind == "stall":
        await fake.hold()
    if request.transport is not None:
        request.transport.close()
    return resp


def _reset(request: web.Request) -> None:
    """Abort the request's connection with a TCP RST (SO_LINGER 0), as a crashed peer does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _error(status: int, retry_after: float = 0.0) -> web.Response:
    kinds = {400: ("invalid_request_error", "'messages' is a required non-empty array"),
             401: ("invalid_request_error", "Incorrect API key provided: sk-up****cret."),
             429: ("requests", "Rate limit reached (fake)"),
             500: ("server_error", "The server had an error (fake)")}
    etype, message = kinds[status]
    headers = {"Retry-After": str(retry_after)} if status == 429 else {}
    return web.Response(status=status, headers=headers, content_type="application/json",
                        body=orjson.dumps({"error": {"message": message, "type": etype,
                                                     "param": None, "code": None}}))


def _last_text(messages: list[dict[str, Any]], role: str = "user") -> str:
    for message in reversed(messages):
        if message.get("role") == role:
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _wants_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools: list[dict[str, Any]] = [t for t in body.get("tools") or []
                                   if t.get("type") == "function"]
    if not tools or body["messages"][-1].get("role") == "tool":
        return None
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["function"]["name"] == name), None)
    if choice == "required":
        return tools[0]
    words = set(re.findall(r"[a-z0-9]+", _last_text(body["messages"]).lower()))
    for tool in tools:
        if set(tool["function"]["name"].lower().split("_")) <= words:
            return tool
    return None


def _arguments(tool: dict[str, Any]) -> str:
    props = (tool["function"].get("parameters") or {}).get("properties") or {}
    samples = {"string": "example", "integer": 1, "number": 1.0, "boolean": True,
               "array": [], "object": {}}
    return orjson.dumps({k: samples.get(v.get("type"), None) for k, v in props.items()}).decode()


def answer(body: dict[str, Any], scripted: dict[str, str] | None = None) -> dict[str, Any]:
    """The fake's deterministic chat.completion for a request body (`scripted`: the answer
    to a last message that contains the phrase, instead of the echo)."""
    model = str(body.get("model", "gpt-4o"))
    messages = body["messages"]
    said = next((reply for phrase, reply in (scripted or {}).items()
                 if phrase in _last_text(messages)), None)
    prompt = tokens.count_request(body)
    tool = _wants_tool(body)
    choices = []
    completion_tokens = 0
    for index in range(int(body.get("n") or 1)):
        if tool:
            function = {"name": tool["function"]["name"], "arguments": _arguments(tool)}
            call = {"id": "call_" + secrets.token_hex(8), "type": "function", "function": function}
            message: dict[str, Any] = {"role": "assistant", "content": None,
                                       "tool_calls": [call], "refusal": None}
            finish = "tool_calls"
            completion_tokens += tokens.count_text(function["arguments"]) + 8
        else:
            if said is not None:
                text = said
            elif messages[-1].get("role") == "tool":
                text = f"[{model}] Based on the tool result: {_last_text(messages, 'tool')[:200]}"
            else:
                text = f"[{model}] Here is my answer to: {_last_text(messages)[:300]}"
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            enc = tokens.encoding_for_model(model)
            ids = enc.encode_ordinary(text)
            finish = "stop"
            if isinstance(limit, int) and 0 < limit < len(ids):
                ids, finish = ids[:limit], "length"
                text = enc.decode(ids)
            message = {"role": "assistant", "content": text, "refusal": None}
            completion_tokens += len(ids)
        choices.append({"index": index, "message": message, "logprobs": None,
                        "finish_reason": finish})
    completion = make_completion(model, "", prompt_tokens=prompt,
                                 completion_tokens=completion_tokens)
    completion["choices"] = choices
    completion["created"] = int(time.time())
    completion["system_fingerprint"] = "fp_fake"
    return completion
