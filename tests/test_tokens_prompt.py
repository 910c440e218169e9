"""prompt_tokens / message_tokens (memoized) agree with count_request / count_messages."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import tokens

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                         "parameters": {"type": "object"}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


@pytest.mark.parametrize("body", [
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]},
    {"model": "gpt-4", "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "héllo 👋 " * 50}]},
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "x", "name": "sam"}]},
    {"model": "gpt-4o", "messages": [{"role": "assistant", "content": None, "tool_calls": [CALL]},
                                     {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
     "tools": [TOOL]},
    {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
     "functions": [TOOL["function"]]},
])
def test_prompt_tokens_equals_count_request(body: dict[str, Any]) -> None:
    assert tokens.prompt_tokens(body) == tokens.count_request(body)
    assert tokens.prompt_tokens(body) == tokens.count_request(body)  # memoized: same again


async def test_count_request_async_counts_large_requests_in_a_thread_the_same() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * 30_000}]}
    assert tokens.is_large(body["messages"])
    assert await tokens.count_request_async(body) == tokens.count_request(body)


@pytest.mark.parametrize("tools", [None, [], [TOOL], [TOOL, {**TOOL, "type": "web_search"}]])
def test_tool_tokens_equals_count_tools(tools: Any) -> None:
    assert tokens.tool_tokens(tools, "gpt-4o") == tokens.count_tools(tools, "gpt-4o")
