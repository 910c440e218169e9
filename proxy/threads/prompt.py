"""The chat request a run sends: instructions, the thread (truncated), the run's tool rounds.

Truncation honoured here is the client's own `truncation_strategy`
(`last_messages`) and `max_prompt_tokens` (oldest messages dropped to fit);
pruning to save money is the trim stage's job further down the pipeline, which
finds the thread's stored summary in `ctx.prior_summary` and may
leave a new one in `ctx.new_summary`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy import tokens
from proxy.threads.objects import message_text


@dataclass(slots=True)
class ChatRequest:
    """A run's chat request and what the pipeline's stages may want to know about it."""

    body: dict[str, Any]
    thread_info: dict[str, Any] = field(default_factory=dict)
    over_prompt_limit: bool = False


def chat_message(message: dict[str, Any]) -> dict[str, Any]:
    """A thread message as a chat message (text joined; image_url parts kept)."""
    blocks = message.get("content") or []
    if all(b.get("type") == "text" for b in blocks):
        return {"role": message["role"], "content": message_text(message)}
    parts = [{"type": "text", "text": b["text"]["value"]} if b["type"] == "text"
             else {"type": "image_url", "image_url": b["image_url"]} for b in blocks]
    return {"role": message["role"], "content": parts}


def _tool_round(step: dict[str, Any]) -> list[dict[str, Any]]:
    calls = step["step_details"]["tool_calls"]
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function",
         "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
        for c in calls]}
    results = [{"role": "tool", "tool_call_id": c["id"], "content": c["function"]["output"]}
               for c in calls if c["function"].get("output") is not None]
    return [assistant, *results]


def run_tail(steps: list[dict[str, Any]], messages: dict[str, dict[str, Any]]
             ) -> list[dict[str, Any]]:
    """The chat messages this run produced so far: its texts and answered tool rounds."""
    tail: list[dict[str, Any]] = []
    for step in steps:
        details = step["step_details"]
        if details["type"] == "tool_calls":
            tail += _tool_round(step)
        elif details["message_creation"]["message_id"] in messages:
            tail.append(chat_message(messages[details["message_creation"]["message_id"]]))
    return tail


def _fit(history: list[dict[str, Any]], fixed: dict[str, Any], limit: int
         ) -> tuple[list[dict[str, Any]], bool]:
    """Drop the oldest history messages until the prompt fits `limit` tokens."""
    model = str(fixed.get("model") or "gpt-4o")
    total = tokens.count_request(fixed)
    sizes = [tokens.count_messages([m], model) - 3 for m in history]
    total += sum(sizes)
    start = 0
    while total > limit and start < len(history) - 1:
        total -= sizes[start]
        start += 1
    return history[start:], total <= limit


def build_chat_request(run: dict[str, Any], thread_messages: list[dict[str, Any]],
                       steps: list[dict[str, Any]], *, stream: bool,
                       completion_budget: int | None) -> ChatRequest:
    """The chat request for the next turn of `run` (blocking: call off the event loop)."""
    own = {m["id"]: m for m in thread_messages if m.get("run_id") == run["id"]}
    prior = [m for m in thread_messages if m.get("run_id") != run["id"]]
    strategy = run.get("truncation_strategy") or {}
    if strategy.get("type") == "last_messages" and strategy.get("last_messages"):
        prior = prior[-int(strategy["last_messages"]):]
    history = [chat_message(m) for m in prior]
    system = [{"role": "system", "content": run["instructions"]}] if run["instructions"] else []
    body: dict[str, Any] = {"model": run.get("_requested_model", run["model"]),
                            "messages": system + run_tail(steps, own)}
    if run["tools"]:
        body["tools"] = [{"type": "function", "function": t["function"]} for t in run["tools"]]
        body["parallel_tool_calls"] = run["parallel_tool_calls"]
        if run.get("tool_choice") not in (None, "auto"):
            body["tool_choice"] = run["tool_choice"]
    for key in ("temperature", "top_p", "reasoning_effort"):
        if run.get(key) is not None:
            body[key] = run[key]
    if isinstance(run.get("response_format"), dict):
        body["response_format"] = run["response_format"]
    if completion_budget is not None:
        body["max_completion_tokens"] = completion_budget
    fits = True
    if run.get("max_prompt_tokens"):
        history, fits = _fit(history, body, int(run["max_prompt_tokens"]))
    body["messages"] = system + history + body["messages"][len(system):]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    users = sum(1 for m in thread_messages if m["role"] == "user")
    info = {"thread_id": run["thread_id"], "run_id": run["id"],
            "assistant_id": run["assistant_id"], "thread_messages": len(thread_messages),
            "user_turn": users, "sent_messages": len(history)}
    return ChatRequest(body, info, over_prompt_limit=not fits)
