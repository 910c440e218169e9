"""Translate a stream of chat.completion.chunk events into Responses stream events.

Fed the pipeline's chat SSE events one at a time (upstream chunks as they
arrive, or the replay of a pattern reply or cache hit), `ResponseEvents` yields
the typed events the openai SDK's `responses.stream()` helper consumes, each
with its `sequence_number`:

    response.created, response.in_progress,
    per text:  response.output_item.added, response.content_part.added,
               response.output_text.delta..., response.output_text.done,
               response.content_part.done, response.output_item.done
               (refusals: response.refusal.delta / .done)
    per call:  response.output_item.added, response.function_call_arguments.delta...,
               response.function_call_arguments.done, response.output_item.done
    response.completed | response.incomplete | response.failed

`finish()` closes what is open and returns the last event separately, so the
caller can store the Response before the client learns it is complete.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.responses.translate import (
    Item,
    ResponseShell,
    function_call_item,
    message_item,
    new_id,
    outcome,
    refusal_part,
    text_part,
)
from proxy.upstream.sse import event_data

Event = dict[str, Any]
# content part type -> (event name, the part's text field)
_PARTS = {"output_text": ("response.output_text", "text"),
          "refusal": ("response.refusal", "refusal")}
_FINAL_EVENTS = {"completed": "response.completed", "incomplete": "response.incomplete",
                 "failed": "response.failed"}


def frame(event: Event) -> bytes:
    """One SSE frame with the event's type as its `event:` line."""
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class ResponseEvents:
    """The Responses events of one reply, built chunk by chunk (only choice 0 is read)."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self.sequence = 0
        self.output: list[Item] = []
        self.open: int | None = None  # output index of the item still streaming
        self.calls: dict[int, int] = {}  # chat tool_call index -> output index
        self.finish_reason: str | None = None
        self.usage: Mapping[str, Any] | None = None
        self.error: str | None = None

    def _emit(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def start(self) -> list[Event]:
        """response.created and response.in_progress."""
        snapshot = self.shell.build([], None, in_progress=True)
        return [self._emit("response.created", response=snapshot),
                self._emit("response.in_progress", response=copy.deepcopy(snapshot))]

    def feed_event(self, raw: bytes) -> list[Event]:
        """Consume one raw chat SSE event (keep-alives and `[DONE]` yield nothing)."""
        data = event_data(raw)
        if data is None or data.strip() == b"[DONE]":
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.error = self.error or "The upstream sent a stream event that is not JSON."
            return []
        return self.feed_chunk(chunk) if isinstance(chunk, dict) else []

    def feed_chunk(self, chunk: Mapping[str, Any]) -> list[Event]:
        """Consume one parsed chat.completion.chunk (or an error event)."""
        if chunk.get("error"):
            error = chunk["error"]
            self.error = str(error.get("message") if isinstance(error, dict) else error)
            return []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("model"):
            self.shell.model = str(chunk["model"])
        events: list[Event] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text("output_text", str(delta["content"]))
            if delta.get("refusal"):
                events += self._text("refusal", str(delta["refusal"]))
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _add(self, item: Item) -> Event:
        self.output.append(item)
        self.open = len(self.output) - 1
        return self._emit("response.output_item.added", output_index=self.open,
                          item=copy.deepcopy(item))

    def _text(self, kind: str, piece: str) -> list[Event]:
        events: list[Event] = []
        item = self.output[self.open] if self.open is not None else None
        if item is None or item["type"] != "message":
            events += self._close()
            item = message_item(new_id("msg_"), [], "in_progress")
            events.append(self._add(item))
        parts = item["content"]
        if not parts or parts[-1]["type"] != kind:
            events += self._close_part(item)
            parts.append(text_part("") if kind == "output_text" else refusal_part(""))
            events.append(self._emit("response.content_part.added", item_id=item["id"],
                                     output_index=self.open, content_index=len(parts) - 1,
                                     part=dict(parts[-1])))
        name, key = _PARTS[kind]
        parts[-1][key] += piece
        extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
        events.append(self._emit(f"{name}.delta", item_id=item["id"], output_index=self.open,
                                 content_index=len(parts) - 1, delta=piece, **extra))
        return events

    def _close_part(self, item: Item) -> list[Event]:
        parts = item["content"]
        if not parts:
            return []
        part = parts[-1]
        name, key = _PARTS[part["type"]]
        extra: dict[str, Any] = {"logprobs": []} if part["type"] == "output_text" else {}
        where = {"item_id": item["id"], "output_index": self.open,
                 "content_index": len(parts) - 1}
        return [self._emit(f"{name}.done", **where, **{key: part[key]}, **extra),
                self._emit("response.content_part.done", **where, part=dict(part))]

    def _call(self, part: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        index = int(part.get("index") or 0)
        function = part.get("function") or {}
        if index not in self.calls:
            events += self._close()
            item = function_call_item(new_id("fc_"), str(part.get("id") or new_id("call_")),
                                      str(function.get("name") or ""), "", "in_progress")
            self.calls[index] = len(self.output)
            events.append(self._add(item))
        else:
            item = self.output[self.calls[index]]
            item["name"] += str(function.get("name") or "")
        piece = str(function.get("arguments") or "")
        if piece:
            item["arguments"] += piece
            if self.calls[index] == self.open:
                events.append(self._emit("response.function_call_arguments.delta",
                                         item_id=item["id"], output_index=self.open,
                                         delta=piece))
        return events

    def _close(self, status: str = "completed") -> list[Event]:
        if self.open is None:
            return []
        item = self.output[self.open]
        if item["type"] == "message":
            events = self._close_part(item)
        else:
            events = [self._emit("response.function_call_arguments.done", item_id=item["id"],
                                 output_index=self.open, name=item["name"],
                                 arguments=item["arguments"])]
        item["status"] = status
        events.append(self._emit("response.output_item.done", output_index=self.open,
                                 item=copy.deepcopy(item)))
        self.open = None
        return events

    def finish(self, error: str | None = None) -> tuple[list[Event], Event]:
        """Close the open item; (closing events, the final response.* event).

        `error` is how the stream broke off, if it did (the reply's error).
        """
        self.error = self.error or error
        status = outcome(self.finish_reason, self.error)[0]
        closing = self._close("completed" if status == "completed" else "incomplete")
        response = self.shell.build(self.output, self.usage, finish_reason=self.finish_reason,
                                    error=self.error)
        return closing, self._emit(_FINAL_EVENTS[status], response=response)
