"""Shapes of the Assistants API objects, as the openai SDK's `types/beta` define them.

Stored objects are these dicts; keys starting with "_" are the proxy's own
bookkeeping (e.g. a thread's trim summary) and are stripped by `public`.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

from proxy.store.threads_store import Page

_ALPHABET = string.ascii_letters + string.digits
RUN_TTL_SECONDS = 600  # OpenAI expires a run (incl. one waiting for tool outputs) after 10 min
ACTIVE_RUN_STATUSES = frozenset({"queued", "in_progress", "requires_action", "cancelling"})
_INHERITED_RUN_FIELDS = ("model", "tools", "temperature", "top_p", "response_format",
                         "reasoning_effort")  # a run's own value, else its assistant's


def new_id(prefix: str) -> str:
    """A fresh id such as `thread_Ab3...` (24 random letters and digits)."""
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def now() -> int:
    """Unix seconds, as every `*_at` field is."""
    return int(time.time())


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as clients see it (without the proxy's "_" fields)."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def list_object(page: Page) -> dict[str, Any]:
    """OpenAI's list envelope for a page."""
    data = [public(item) for item in page.items]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": page.has_more}


def deleted_object(obj_id: str, kind: str) -> dict[str, Any]:
    """The `{id, object: "<kind>.deleted", deleted: true}` answer."""
    return {"id": obj_id, "object": f"{kind}.deleted", "deleted": True}


def assistant_object(fields: dict[str, Any]) -> dict[str, Any]:
    """A new `assistant` from validated create fields."""
    return {"id": new_id("asst"), "object": "assistant", "created_at": now(),
            "name": None, "description": None, "instructions": None, "tools": [],
            "tool_resources": {}, "metadata": {}, "temperature": None, "top_p": None,
            "response_format": "auto", "reasoning_effort": None, **fields}


def thread_object(fields: dict[str, Any]) -> dict[str, Any]:
    """A new `thread` from validated create fields."""
    return {"id": new_id("thread"), "object": "thread", "created_at": now(),
            "metadata": {}, "tool_resources": {}, **fields}


def message_object(thread_id: str, role: str, content: list[dict[str, Any]], *,
                   metadata: dict[str, Any] | None = None, run_id: str | None = None,
                   assistant_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    """A new `thread.message`."""
    created = now()
    return {"id": new_id("msg"), "object": "thread.message", "created_at": created,
            "thread_id": thread_id, "status": status, "incomplete_details": None,
            "completed_at": created if status == "completed" else None, "incomplete_at": None,
            "role": role, "content": content, "assistant_id": assistant_id, "run_id": run_id,
            "attachments": [], "metadata": metadata or {}}


def text_content(text: str) -> dict[str, Any]:
    """A `text` content block."""
    return {"type": "text", "text": {"value": text, "annotations": []}}


def message_text(message: dict[str, Any]) -> str:
    """The text of a message's text blocks, joined."""
    return "".join(block["text"]["value"] for block in message.get("content") or []
                   if block.get("type") == "text")


def run_object(thread_id: str, assistant: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """A new queued `thread.run`: the assistant's settings overridden by the run's fields."""
    created = now()
    instructions = fields.get("instructions")
    if instructions is None:
        instructions = assistant.get("instructions") or ""
    extra = fields.get("additional_instructions")
    if extra:
        instructions = f"{instructions}\n\n{extra}" if instructions else extra
    inherited = {key: fields[key] if fields.get(key) is not None else assistant.get(key)
                 for key in _INHERITED_RUN_FIELDS}
    return {
        "id": new_id("run"), "object": "thread.run", "created_at": created,
        "assistant_id": assistant["id"], "thread_id": thread_id, "status": "queued",
        "started_at": None, "expires_at": created + RUN_TTL_SECONDS, "cancelled_at": None,
        "failed_at": None, "completed_at": None, "required_action": None, "last_error": None,
        "instructions": instructions, "incomplete_details": None, "usage": None,
        "metadata": fields.get("metadata") or {},
        "max_prompt_tokens": fields.get("max_prompt_tokens"),
        "max_completion_tokens": fields.get("max_completion_tokens"),
        "truncation_strategy": fields.get("truncation_strategy")
        or {"type": "auto", "last_messages": None},
        "tool_choice": fields.get("tool_choice") or "auto",
        "parallel_tool_calls": fields.get("parallel_tool_calls", True),
        **inherited, "tools": inherited["tools"] or [],
    }


def step_object(run: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    """A new in-progress `thread.run.step` of `run` (message_creation or tool_calls)."""
    return {"id": new_id("step"), "object": "thread.run.step", "created_at": now(),
            "run_id": run["id"], "assistant_id": run["assistant_id"],
            "thread_id": run["thread_id"], "type": details["type"], "status": "in_progress",
            "step_details": details, "cancelled_at": None, "completed_at": None,
            "expired_at": None, "failed_at": None, "last_error": None, "usage": None,
            "metadata": {}}


def usage_object(prompt: int, completion: int) -> dict[str, int]:
    """A `usage` object."""
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def add_usage(total: dict[str, int] | None, more: dict[str, int]) -> dict[str, int]:
    """Sum of two usage objects (the first may be None)."""
    if total is None:
        return dict(more)
    return usage_object(total["prompt_tokens"] + more["prompt_tokens"],
                        total["completion_tokens"] + more["completion_tokens"])
