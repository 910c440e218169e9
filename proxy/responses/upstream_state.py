"""Which Responses requests need the upstream's own state or hosted tools.

The proxy translates a Responses request to chat completions only when
everything in it has a chat equivalent: messages, function tools and their
calls and outputs. Built-in tools (web search, file search, code interpreter,
computer use, image generation, MCP, shells), background responses, stored
conversations and prompt templates, items that refer to what the upstream
stored, and files given by id or URL live on the upstream: such a request has
to reach the upstream's own /v1/responses. `upstream_need` says why, reading
the body defensively (it runs before validation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRANSLATED_ITEMS = frozenset({"message", "function_call", "function_call_output", "reasoning"})
TRANSLATED_PARTS = frozenset({"input_text", "output_text", "refusal", "input_image",
                              "input_file", "input_audio"})
TRANSLATED_CHOICES = frozenset({"function", "allowed_tools"})


@dataclass(frozen=True, slots=True)
class UpstreamNeed:
    """Why a request needs the upstream's Responses API, and the parameter that says so."""

    reason: str
    param: str


def item_type(item: Any) -> str | None:
    """An input item's type (`message` for a bare {role, content})."""
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind is None and "role" in item:
        return "message"
    return kind if isinstance(kind, str) else None


def _tool_need(tools: Any) -> UpstreamNeed | None:
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind != "function":
            return UpstreamNeed(f"the built-in tool '{kind}' runs on the upstream",
                                f"tools[{i}].type")
    return None


def _choice_need(choice: Any) -> UpstreamNeed | None:
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if isinstance(kind, str) and kind not in TRANSLATED_CHOICES:
        return UpstreamNeed(f"tool_choice '{kind}' names a built-in tool that runs on the "
                            "upstream", "tool_choice.type")
    if kind == "allowed_tools":
        return _tool_need(choice.get("tools"))
    return None


def _part_need(part: Any, param: str) -> UpstreamNeed | None:
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(kind, str):
        return None
    if kind not in TRANSLATED_PARTS:
        return UpstreamNeed(f"content parts of type '{kind}' have no chat completions "
                            "equivalent", f"{param}.type")
    if kind == "input_image" and not part.get("image_url") and part.get("file_id"):
        return UpstreamNeed("an image given by file_id lives in the upstream's Files API",
                            f"{param}.file_id")
    if kind == "input_file" and part.get("file_url"):
        return UpstreamNeed("a file given by file_url is fetched by the upstream",
                            f"{param}.file_url")
    return None


def _input_need(items: Any) -> UpstreamNeed | None:
    for i, item in enumerate(items if isinstance(items, list) else []):
        kind = item_type(item)
        if kind is not None and kind not in TRANSLATED_ITEMS:
            return UpstreamNeed(f"input items of type '{kind}' belong to the upstream's "
                                "hosted tools or stored items", f"input[{i}].type")
        content = item.get("content") if kind == "message" else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            need = _part_need(part, f"input[{i}].content[{j}]")
            if need is not None:
                return need
    return None


def upstream_need(body: dict[str, Any]) -> UpstreamNeed | None:
    """Why this request must go to the upstream's own Responses API (None: it translates)."""
    if body.get("background"):
        return UpstreamNeed("background responses run and are polled on the upstream",
                            "background")
    if body.get("conversation") is not None:
        return UpstreamNeed("conversations are stored by the upstream", "conversation")
    if body.get("prompt") is not None:
        return UpstreamNeed("prompt templates are stored by the upstream", "prompt")
    return (_tool_need(body.get("tools")) or _choice_need(body.get("tool_choice"))
            or _input_need(body.get("input")))
