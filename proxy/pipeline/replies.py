"""Build chat.completion objects and convert them to and from streamed chunks.

Pattern replies and cache hits are served through these, so a free answer is a
genuine `chat.completion` (or `chat.completion.chunk` events for stream
clients), and a streamed upstream answer can be assembled for the cache from
the chunks that passed through.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson

from proxy.pipeline.core import Chunks, Context, Reply, Usage
from proxy.upstream.sse import DONE, event, event_data, from_list, split_events

log = logging.getLogger("proxy.replies")


def completion_id() -> str:
    """A fresh `chatcmpl-...` id."""
    return "chatcmpl-" + secrets.token_hex(12)


def make_completion(
    model: str,
    content: str,
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """A one-choice assistant `chat.completion`."""
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": None,
    }


def _chunk(base: Mapping[str, Any], choices: list[Any], usage: Any = None) -> dict[str, Any]:
    return {**base, "object": "chat.completion.chunk", "choices": choices, "usage": usage}


def completion_to_events(
    completion: Mapping[str, Any], *, include_usage: bool, piece_chars: int = 48
) -> list[bytes]:
    """SSE events that replay a complete `chat.completion` as a stream."""
    base = {
        "id": completion.get("id") or completion_id(),
        "created": completion.get("created") or int(time.time()),
        "model": completion.get("model", ""),
        "system_fingerprint": completion.get("system_fingerprint"),
    }
    events: list[bytes] = []
    for choice in completion.get("choices", []):
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        first: dict[str, Any] = {"role": "assistant", "content": ""}
        if message.get("refusal"):
            first["refusal"] = message["refusal"]
        events.append(event(_chunk(base, [{"index": index, "delta": first,
                                           "logprobs": None, "finish_reason": None}])))
        content = message.get("content") or ""
        for start in range(0, len(content), piece_chars):
            delta = {"content": content[start:start + piece_chars]}
            events.append(event(_chunk(base, [{"index": index, "delta": delta,
                                               "logprobs": None, "finish_reason": None}])))
        for i, call in enumerate(message.get("tool_calls") or []):
            delta = {"tool_calls": [{"index": i, **call}]}
            events.append(event(_chunk(base, [{"index": index, "delta": delta,
                                               "logprobs": None, "finish_reason": None}])))
        events.append(event(_chunk(base, [{"index": index, "delta": {}, "logprobs": None,
                                           "finish_reason": choice.get("finish_reason")}])))
    if include_usage:
        events.append(event(_chunk(base, [], completion.get("usage"))))
    events.append(DONE)
    return events


class StreamAssembler:
    """Rebuilds a `chat.completion` from the chunk events of a stream."""

    def __init__(self) -> None:
        self.base: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Any = None
        self.done = False

    def feed_events(self, events: Iterable[bytes]) -> None:
        """Consume raw SSE events (each ending in a blank line)."""
        for raw in events:
            data = event_data(raw)
            if data is None:
                continue
            if data.strip() == b"[DONE]":
                self.done = True
                continue
            self.feed_chunk(orjson.loads(data))

    def feed_chunk(self, chunk: Mapping[str, Any]) -> None:
        """Consume one parsed `chat.completion.chunk`."""
        if not self.base:
            self.base = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            slot = self.choices.setdefault(
                choice.get("index", 0),
                {"content": [], "tool_calls": {}, "finish_reason": None, "refusal": None},
            )
            delta = choice.get("delta") or {}
            if delta.get("content"):
                slot["content"].append(delta["content"])
            if delta.get("refusal"):
                slot["refusal"] = (slot["refusal"] or "") + delta["refusal"]
            for call in delta.get("tool_calls") or []:
                self._merge_tool_call(slot["tool_calls"], call)
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]

    @staticmethod
    def _merge_tool_call(calls: dict[int, dict[str, Any]], part: Mapping[str, Any]) -> None:
        call = calls.setdefault(part.get("index", 0),
                                {"id": None, "type": "function",
                                 "function": {"name": "", "arguments": ""}})
        if part.get("id"):
            call["id"] = part["id"]
        fn = part.get("function") or {}
        call["function"]["name"] += fn.get("name") or ""
        call["function"]["arguments"] += fn.get("arguments") or ""

    def completion(self) -> dict[str, Any]:
        """The assembled `chat.completion`."""
        choices = []
        for index in sorted(self.choices):
            slot = self.choices[index]
            message: dict[str, Any] = {"role": "assistant",
                                       "content": "".join(slot["content"]) or None,
                                       "refusal": slot["refusal"]}
            if slot["tool_calls"]:
                message["tool_calls"] = [slot["tool_calls"][i] for i in sorted(slot["tool_calls"])]
            choices.append({"index": index, "message": message, "logprobs": None,
                            "finish_reason": slot["finish_reason"]})
        return {**self.base, "object": "chat.completion", "choices": choices, "usage": self.usage}


async def tap_stream(chunks: Chunks, reply: Reply,
                     on_done: Callable[[dict[str, Any]], Awaitable[None]]) -> Chunks:
    """Pass a stream through unchanged while assembling it.

    Once `[DONE]` went by in a stream the upstream finished without error, `on_done`
    gets the assembled chat.completion before that last piece is handed on (so the
    client's next request can already see what was stored). A stream that was cut,
    that the client left (`reply.client_left`: it is read on only to be billed), or
    that cannot be parsed calls nothing. Closing the tap closes the inner stream,
    which releases the upstream.
    """
    assembler: StreamAssembler | None = StreamAssembler()
    rest = b""
    try:
        async for piece in chunks:
            if reply.client_left:
                assembler = None  # nothing from an abandoned stream is kept
            last = b"[DONE]" in piece
            if not last:
                yield piece  # to the client first: assembling never delays a chunk
            if assembler is not None and not assembler.done:
                try:
                    events, rest = split_events(rest + piece)
                    assembler.feed_events(events)
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    log.warning("could not assemble a streamed answer; it is passed on only")
                    assembler = None
                if assembler is not None and assembler.done and reply.completed \
                        and not reply.error:
                    await on_done(assembler.completion())
            if last:
                yield piece
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def when_answered(reply: Reply, hook: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """Give `hook` the assembled chat.completion of the streamed `reply` once it finished
    without error (never for a stream that was cut or that the client left). However many
    stages ask, the stream is tapped and assembled once; hooks run in the order they were
    added (the innermost stage's first)."""
    if reply.answer_hooks is not None:
        reply.answer_hooks.append(hook)
        return
    hooks = reply.answer_hooks = [hook]

    async def answered(completion: dict[str, Any]) -> None:
        for each in hooks:
            await each(completion)

    assert reply.chunks is not None, "only a stream is answered later"
    reply.chunks = tap_stream(reply.chunks, reply, answered)


def free_reply(ctx: Context, completion: Mapping[str, Any], *, stage: str,
               saved_usage: Usage | None, headers: dict[str, str] | None = None) -> Reply:
    """A reply the proxy gives itself (pattern, cache hit): JSON, or SSE for stream clients."""
    reply = Reply(status=200, stage=stage, model=ctx.requested_model, completed=True,
                  headers=headers or {}, saved_usage=saved_usage)
    if ctx.stream:
        reply.chunks = from_list(completion_to_events(completion,
                                                      include_usage=ctx.client_wants_usage))
    else:
        reply.body = orjson.dumps(completion)
    return reply
