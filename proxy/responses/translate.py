"""Translate Responses requests to chat completions bodies, and chat answers to Responses.

In: `input` (a string or items: messages with input_text/image/file/audio parts,
`function_call` and `function_call_output` items), `instructions`, flat function
tools, `text.format`, sampling and limits become one chat.completions body,
after the items of the `previous_response_id` chain. Out: a chat.completion
becomes a Response object: message items (output_text, refusal parts),
function_call items, Responses usage. The item builders here are shared with
the stream translator (`stream.py`). Bodies are validated first (`validate.py`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.responses.upstream_state import item_type

Item = dict[str, Any]
Message = dict[str, Any]
# Responses fields that chat completions takes under the same name and meaning
SAME_FIELDS = ("temperature", "top_p", "metadata", "user", "safety_identifier",
               "prompt_cache_key", "service_tier")


def new_id(prefix: str) -> str:
    """A fresh object id such as `resp_...`, `msg_...`, `fc_...`."""
    return prefix + secrets.token_hex(24)


# --- items --------------------------------------------------------------------------------


def text_part(text: str) -> dict[str, Any]:
    """An `output_text` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(refusal: str) -> dict[str, Any]:
    """A `refusal` content part."""
    return {"type": "refusal", "refusal": refusal}


def message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> Item:
    """An assistant `message` output item."""
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": parts}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str) -> Item:
    """A `function_call` output item."""
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def _input_message(item: Mapping[str, Any]) -> Item:
    role = item["role"]
    content = item["content"]
    if isinstance(content, str):
        content = [text_part(content) if role == "assistant"
                   else {"type": "input_text", "text": content}]
    return {"id": item.get("id") or new_id("msg_"), "type": "message", "role": role,
            "status": item.get("status") or "completed", "content": list(content)}


def input_items(value: str | Sequence[Mapping[str, Any]] | None) -> list[Item]:
    """A request's `input` as stored items: every item typed, with an id and a status."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_input_message({"role": "user", "content": value})]
    items: list[Item] = []
    for raw in value:
        kind = item_type(raw)
        if kind == "message":
            items.append(_input_message(raw))
        elif kind in ("function_call", "function_call_output"):
            prefix = "fc_" if kind == "function_call" else "fco_"
            items.append({**raw, "type": kind, "id": raw.get("id") or new_id(prefix),
                          "status": raw.get("status") or "completed"})
        else:
            items.append(dict(raw))
    return items


# --- items -> chat messages ---------------------------------------------------------------


def _chat_part(part: Mapping[str, Any]) -> dict[str, Any]:
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image":
        return {"type": "image_url", "image_url": {"url": part["image_url"],
                                                   "detail": part.get("detail") or "auto"}}
    if kind == "input_file":
        return {"type": "file", "file": {k: part[k] for k in ("file_id", "file_data", "filename")
                                         if part.get(k)}}
    return {"type": "input_audio", "input_audio": part["input_audio"]}


def _text_or_parts(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (as chat clients send it), else the parts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _chat_message(item: Mapping[str, Any]) -> Message:
    role = item["role"]
    content = item["content"]
    if isinstance(content, str):
        return {"role": role, "content": content}
    parts = [_chat_part(p) for p in content]
    if role == "assistant":
        return {"role": role, "content": "".join(str(p.get("text", "")) for p in parts)}
    return {"role": role, "content": _text_or_parts(parts)}


def _tool_output(output: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    return _text_or_parts([{"type": "text", "text": p["text"]} for p in output])


def chat_messages(items: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Responses items as chat messages.

    A `function_call` joins the assistant message just before it (the text the
    model said along with the call) or starts one; consecutive calls share it, as
    parallel tool calls do in chat. `reasoning` items carry nothing a chat model
    reads and are left out.
    """
    messages: list[Message] = []
    for item in items:
        kind = item_type(item)
        if kind == "message":
            messages.append(_chat_message(item))
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last.get("content") or None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": _tool_output(item["output"])})
    return messages


# --- request -> chat body -----------------------------------------------------------------


def chat_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Responses' flat function tools as chat's nested ones."""
    nested = []
    for tool in tools:
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict")
                    if tool.get(k) is not None}
        nested.append({"type": "function", "function": function})
    return nested


def chat_tool_choice(choice: str | Mapping[str, Any]) -> str | dict[str, Any]:
    """A Responses tool_choice in chat's shape."""
    if isinstance(choice, str):
        return choice
    if choice["type"] == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"type": "allowed_tools", "allowed_tools": {
        "mode": choice["mode"],
        "tools": [{"type": "function", "function": {"name": t.get("name")}}
                  for t in choice["tools"]]}}


def response_format(fmt: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`text.format` as chat's `response_format` (None for plain text)."""
    if fmt is None or fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema = {k: fmt[k] for k in ("name", "description", "schema", "strict")
              if fmt.get(k) is not None}
    return {"type": "json_schema", "json_schema": schema}


def chat_body(body: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
              items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The chat.completions body for a validated Responses request.

    `history` are the items of the chain it continues, `items` its own input.
    The request's `instructions` open the messages as a system message (an
    earlier response's instructions are not carried over, as with OpenAI).
    """
    instructions = body.get("instructions")
    messages = ([{"role": "system", "content": instructions}] if instructions else [])
    chat: dict[str, Any] = {"model": body["model"],
                            "messages": messages + chat_messages([*history, *items])}
    if body.get("tools"):
        chat["tools"] = chat_tools(body["tools"])
        if body.get("tool_choice") is not None:
            chat["tool_choice"] = chat_tool_choice(body["tool_choice"])
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    for key in SAME_FIELDS:
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    text = body.get("text") or {}
    fmt = response_format(text.get("format"))
    if fmt is not None:
        chat["response_format"] = fmt
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def echoed_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields a Response object repeats, with OpenAI's defaults."""
    reasoning = body.get("reasoning") or {}
    text = body.get("text") or {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": body.get("service_tier"),
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": list(body.get("tools") or []),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
        "background": False,
    }


@dataclass(slots=True)
class Turn:
    """One Responses request, translated: the chat body and what the Response needs."""

    chat: dict[str, Any]
    input_items: list[Item]
    echo: dict[str, Any]
    store: bool = True


def translate_request(body: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()
                      ) -> Turn:
    """A validated Responses body (continuing `history`) as a chat request."""
    items = input_items(body.get("input"))
    return Turn(chat=chat_body(body, history, items), input_items=items,
                echo=echoed_fields(body), store=body.get("store", True) is not False)


# --- chat answer -> Response --------------------------------------------------------------


def response_usage(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Chat `usage` as Responses usage (None stays None)."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": int(reasoning)},
            "total_tokens": prompt + completion}


def outcome(finish_reason: str | None, error: str | None
            ) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """(status, incomplete_details, error) of a Response from how its chat answer ended."""
    if error:
        return "failed", None, {"code": "server_error", "message": error}
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}, None
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}, None
    return "completed", None, None


def output_items(message: Mapping[str, Any], status: str) -> list[Item]:
    """A chat assistant message as output items: its text and refusal, then its calls."""
    parts = []
    if message.get("content"):
        parts.append(text_part(str(message["content"])))
    if message.get("refusal"):
        parts.append(refusal_part(str(message["refusal"])))
    items = [message_item(new_id("msg_"), parts, status)] if parts else []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        items.append(function_call_item(new_id("fc_"), call.get("id") or new_id("call_"),
                                        function.get("name") or "",
                                        function.get("arguments") or "", "completed"))
    return items


@dataclass(slots=True)
class ResponseShell:
    """What every state of one Response shares: id, creation time, model, echoed fields."""

    model: str
    echo: dict[str, Any]
    id: str = field(default_factory=lambda: new_id("resp_"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def build(self, output: list[Item], usage: Mapping[str, Any] | None, *,
              finish_reason: str | None = None, error: str | None = None,
              in_progress: bool = False) -> dict[str, Any]:
        """The Response object with this output (chat `usage`) and ending."""
        status, incomplete, failure = outcome(finish_reason, error)
        if in_progress:
            status = "in_progress"
        return {"id": self.id, "object": "response", "created_at": self.created_at,
                "status": status,
                "completed_at": int(time.time()) if status == "completed" else None,
                "error": failure, "incomplete_details": incomplete, "model": self.model,
                "output": output, "usage": response_usage(usage), **self.echo}

    def from_completion(self, completion: Mapping[str, Any]) -> dict[str, Any]:
        """The finished Response for a chat.completion."""
        choice = (completion.get("choices") or [{}])[0]
        finish = choice.get("finish_reason")
        status = "completed" if outcome(finish, None)[0] == "completed" else "incomplete"
        self.model = str(completion.get("model") or self.model)
        return self.build(output_items(choice.get("message") or {}, status),
                          completion.get("usage"), finish_reason=finish)
