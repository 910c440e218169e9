"""The chat request a run sends (proxy/threads/prompt.py) and body validation (params.py)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.errors import InvalidRequest
from proxy.threads import params
from proxy.threads.objects import message_object, run_object, step_object, text_content
from proxy.threads.prompt import build_chat_request
from proxy.tokens import count_messages

ASSISTANT = {"id": "asst_1", "model": "gpt-4o", "instructions": "Be kind.", "tools": []}


def _thread(*texts: str) -> list[dict[str, Any]]:
    return [message_object("thread_1", "user" if i % 2 == 0 else "assistant",
                           [text_content(t)]) for i, t in enumerate(texts)]


def _run(**fields: Any) -> dict[str, Any]:
    return run_object("thread_1", ASSISTANT, fields)


@pytest.mark.parametrize(
    ("fields", "expected_texts"),
    [
        ({}, ["a", "b", "c", "d", "e"]),
        ({"truncation_strategy": {"type": "last_messages", "last_messages": 2}}, ["d", "e"]),
        ({"max_prompt_tokens": "fits system, d and e"}, ["d", "e"]),
    ],
)
def test_thread_is_truncated_as_the_run_asks(fields: dict[str, Any],
                                             expected_texts: list[str]) -> None:
    if "max_prompt_tokens" in fields:
        fields = {"max_prompt_tokens": count_messages(
            [{"role": "system", "content": "Be kind."}, {"role": "assistant", "content": "d"},
             {"role": "user", "content": "e"}])}
    request = build_chat_request(_run(**fields), _thread("a", "b", "c", "d", "e"), [],
                                 stream=False, completion_budget=None)
    messages = request.body["messages"]
    assert messages[0] == {"role": "system", "content": "Be kind."}
    assert [m["content"] for m in messages[1:]] == expected_texts
    assert not request.over_prompt_limit


def test_prompt_that_cannot_fit_is_flagged() -> None:
    request = build_chat_request(_run(max_prompt_tokens=5), _thread("a", "b"), [],
                                 stream=False, completion_budget=None)
    assert request.over_prompt_limit


def test_answered_tool_round_follows_the_thread() -> None:
    run = _run(tools=[{"type": "function", "function": {"name": "get_weather"}}])
    step = step_object(run, {"type": "tool_calls", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{}", "output": "sunny"}}]})
    request = build_chat_request(run, _thread("weather?"), [step], stream=True,
                                 completion_budget=20)
    body = request.body
    assert body["messages"][-2]["tool_calls"][0]["id"] == "call_1"
    assert body["messages"][-1] == {"role": "tool", "tool_call_id": "call_1",
                                    "content": "sunny"}
    assert body["tools"] == [{"type": "function", "function": {"name": "get_weather"}}]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 20


def test_image_url_parts_are_kept_as_chat_parts() -> None:
    fields = params.message({"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]})
    message = message_object("thread_1", "user", fields["content"])
    request = build_chat_request(_run(), [message], [], stream=False, completion_budget=None)
    assert request.body["messages"][1]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"role": "user", "content": [{"type": "image_file", "image_file": {"file_id": "f"}}]},
         "content[0]"),
        ({"role": "user", "content": "x", "attachments": [{"file_id": "f"}]}, "attachments"),
        ({"role": "user", "content": ""}, None),
        ({"role": "user", "content": []}, "content"),
        ({"role": "user", "content": "x", "metadata": {"k": 1}}, "metadata.k"),
        ({"role": "tool", "content": "x"}, "role"),
    ],
)
def test_bad_messages_are_refused_naming_the_field(body: dict[str, Any],
                                                   param: str | None) -> None:
    if param is None:
        assert params.message(body)["content"][0]["text"]["value"] == ""
        return
    with pytest.raises(InvalidRequest) as err:
        params.message(body)
    assert err.value.param == param


@pytest.mark.parametrize(
    ("query", "problem"),
    [({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "x"}, "limit"),
     ({"order": "up"}, "order")],
)
def test_bad_list_parameters_are_refused(query: dict[str, str], problem: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        params.list_query(query)
    assert err.value.param == problem
