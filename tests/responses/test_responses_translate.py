"""The Responses translation: requests to chat bodies, chat answers and chunks to Responses.

Objects and events are also checked against the openai SDK's own pydantic types,
so a field the SDK requires cannot go missing unnoticed.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from proxy.api.responses import item_page
from proxy.errors import InvalidRequest
from proxy.pipeline.replies import completion_to_events, make_completion
from proxy.responses.stream import ResponseEvents
from proxy.responses.translate import (
    ResponseShell,
    chat_messages,
    input_items,
    translate_request,
)
from proxy.responses.upstream_state import upstream_need
from proxy.responses.validate import validate_request

EVENTS = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
           "strict": False}
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather",
        "arguments": '{"city": "Oslo"}'}


def chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The chat body a (validated) Responses body becomes."""
    validate_request(body)
    return translate_request(body, history or []).chat


def completion_with(content: str | None = None, calls: list[dict[str, Any]] | None = None,
                    finish: str = "stop", **usage: Any) -> dict[str, Any]:
    """A chat.completion with this content, tool calls, finish reason and usage."""
    completion = make_completion("gpt-4o", content or "", prompt_tokens=12, completion_tokens=5,
                                 finish_reason=finish)
    message = completion["choices"][0]["message"]
    message["content"] = content
    if calls:
        message["tool_calls"] = calls
    completion["usage"].update(usage)
    return completion


def shell(**echo: Any) -> ResponseShell:
    """A shell echoing a minimal request."""
    return ResponseShell(model="gpt-4o", echo=translate_request({"model": "gpt-4o",
                                                                 "input": "x", **echo}).echo)


def stream_events(completion: dict[str, Any], error: str | None = None) -> list[dict[str, Any]]:
    """All Responses events for a completion replayed as chat chunks."""
    translator = ResponseEvents(shell())
    events = translator.start()
    for raw in completion_to_events(completion, include_usage=True, piece_chars=4):
        events += translator.feed_event(raw)
    closing, final = translator.finish(error)
    return [*events, *closing, final]


# --- request -> chat ----------------------------------------------------------------------


def test_string_input_and_instructions_become_system_and_user_messages() -> None:
    body = chat({"model": "gpt-4o", "input": "Hello", "instructions": "Be terse."})
    assert body == {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be terse."},
                                                    {"role": "user", "content": "Hello"}]}


def test_message_items_with_parts_keep_roles_and_translate_parts() -> None:
    body = chat({"model": "gpt-4o", "input": [
        {"role": "developer", "content": "Use metric units."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"}]},
    ]})
    assert body["messages"] == [
        {"role": "developer", "content": "Use metric units."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png",
                                                "detail": "low"}}]},
    ]


def test_function_calls_join_the_assistant_message_and_outputs_become_tool_messages() -> None:
    second = {**CALL, "call_id": "call_2", "arguments": '{"city": "Rome"}'}
    messages = chat_messages(input_items([
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": "Let me check."},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        CALL, second,
        {"type": "function_call_output", "call_id": "call_1", "output": "snow"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "sun"}]},
    ]))
    assert messages == [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "snow"},
        {"role": "tool", "tool_call_id": "call_2", "content": "sun"},
    ]


def test_a_call_without_text_before_it_starts_an_assistant_message() -> None:
    messages = chat_messages(input_items([{"role": "user", "content": "Oslo?"}, CALL]))
    assert messages[1] == {"role": "assistant", "content": None,
                           "tool_calls": [{"id": "call_1", "type": "function", "function": {
                               "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}


def test_tools_choice_format_and_limits_map_to_chat_fields() -> None:
    body = chat({"model": "gpt-4o", "input": "Weather?", "tools": [WEATHER],
                 "tool_choice": {"type": "function", "name": "get_weather"},
                 "parallel_tool_calls": False, "temperature": 0.2, "top_p": 0.9,
                 "max_output_tokens": 64, "metadata": {"app": "coach"}, "user": "u-1",
                 "reasoning": {"effort": "low"}, "store": True, "stream": True,
                 "text": {"format": {"type": "json_schema", "name": "weather", "strict": True,
                                     "schema": {"type": "object"}}, "verbosity": "low"}})
    assert body == {
        "model": "gpt-4o", "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city",
            "parameters": WEATHER["parameters"], "strict": False}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False, "temperature": 0.2, "top_p": 0.9,
        "metadata": {"app": "coach"}, "user": "u-1", "max_completion_tokens": 64,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "weather", "schema": {"type": "object"}, "strict": True}},
        "verbosity": "low", "reasoning_effort": "low",
        "stream": True, "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(("fmt", "expected"), [
    ({"type": "text"}, None),
    ({"type": "json_object"}, {"type": "json_object"}),
])
def test_text_formats(fmt: dict[str, Any], expected: dict[str, Any] | None) -> None:
    body = chat({"model": "gpt-4o", "input": "x", "text": {"format": fmt}})
    assert body.get("response_format") == expected


def test_allowed_tools_choice_and_tool_fields_only_with_tools() -> None:
    body = chat({"model": "gpt-4o", "input": "x", "tools": [WEATHER], "tool_choice": {
        "type": "allowed_tools", "mode": "required",
        "tools": [{"type": "function", "name": "get_weather"}]}})
    assert body["tool_choice"] == {"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}
    bare = chat({"model": "gpt-4o", "input": "x", "tool_choice": "auto",
                 "parallel_tool_calls": True})
    assert "tool_choice" not in bare and "parallel_tool_calls" not in bare


def test_history_comes_after_instructions_and_before_the_new_input() -> None:
    history = input_items("first") + [{"type": "message", "id": "msg_a", "role": "assistant",
                                       "status": "completed",
                                       "content": [{"type": "output_text", "text": "one",
                                                    "annotations": []}]}]
    body = chat({"model": "gpt-4o", "input": "second", "instructions": "Now."}, history)
    assert body["messages"] == [{"role": "system", "content": "Now."},
                                {"role": "user", "content": "first"},
                                {"role": "assistant", "content": "one"},
                                {"role": "user", "content": "second"}]


def test_input_items_get_ids_types_and_typed_content() -> None:
    items = input_items([{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello", "id": "msg_mine"}, CALL])
    assert items[0]["id"].startswith("msg_") and items[0]["type"] == "message"
    assert items[0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert items[1]["id"] == "msg_mine" and items[1]["content"][0]["type"] == "output_text"
    assert items[2]["id"].startswith("fc_") and items[2]["status"] == "completed"
    assert len({i["id"] for i in items}) == 3


# --- validation and what needs the upstream ---------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": "gpt-4o"}, "input"),
    ({"model": "gpt-4o", "input": []}, "input"),
    ({"model": "gpt-4o", "input": 3}, "input"),
    ({"model": "gpt-4o", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "gpt-4o", "input": [{"type": "function_call", "call_id": "c"}]}, "input[0].name"),
    ({"model": "gpt-4o", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
     "input[0].content[0].text"),
    ({"model": "gpt-4o", "input": "x", "temperature": 3}, "temperature"),
    ({"model": "gpt-4o", "input": "x", "max_output_tokens": 5}, "max_output_tokens"),
    ({"model": "gpt-4o", "input": "x", "tools": [{"type": "function", "name": "a b"}]},
     "tools[0].name"),
    ({"model": "gpt-4o", "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": "gpt-4o", "input": "x", "text": {"format": {"type": "json_schema",
                                                           "schema": {}}}},
     "text.format.name"),
    ({"model": "gpt-4o", "input": "x", "text": {"format": {"type": "yaml"}}},
     "text.format.type"),
    ({"model": "gpt-4o", "input": "x", "metadata": {"k": 1}}, "metadata.k"),
    ({"model": "gpt-4o", "input": "x", "truncation": "sometimes"}, "truncation"),
])
def test_invalid_requests_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_request(body)
    assert err.value.param == param


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [WEATHER, {"type": "web_search"}]}, "tools[1].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
    ({"tool_choice": {"type": "code_interpreter"}}, "tool_choice.type"),
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0].file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_file",
                                              "file_url": "https://x/y.pdf"}]}]},
     "input[0].content[0].file_url"),
])
def test_requests_needing_the_upstream_say_why(extra: dict[str, Any], param: str) -> None:
    need = upstream_need({"model": "gpt-4o", "input": "x", **extra})
    assert need is not None and need.param == param and need.reason


def test_translatable_requests_need_nothing_from_the_upstream() -> None:
    assert upstream_need({"model": "gpt-4o", "tools": [WEATHER], "tool_choice": "auto",
                          "input": [{"role": "user", "content": [
                              {"type": "input_text", "text": "x"},
                              {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
                              CALL, {"type": "function_call_output", "call_id": "call_1",
                                     "output": "ok"}]}) is None


# --- chat answer -> Response --------------------------------------------------------------


def test_completion_becomes_a_response_the_sdk_accepts() -> None:
    completion = completion_with("It is sunny.", prompt_tokens_details={"cached_tokens": 4},
                                 completion_tokens_details={"reasoning_tokens": 2})
    obj = shell(instructions="Be terse.", metadata={"a": "b"}).from_completion(completion)
    response = Response.model_validate(obj)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.output_text == "It is sunny."
    assert response.instructions == "Be terse." and response.metadata == {"a": "b"}
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens,
            response.usage.total_tokens) == (12, 5, 17)
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens_details.reasoning_tokens == 2


def test_tool_calls_become_function_call_items_after_the_text() -> None:
    calls = [{"id": "call_9", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    obj = shell().from_completion(completion_with("Checking.", calls, finish="tool_calls"))
    response = Response.model_validate(obj)
    assert [item.type for item in response.output] == ["message", "function_call"]
    call = response.output[1]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_9", "get_weather",
                                                         '{"city": "Oslo"}')


def test_length_finish_is_an_incomplete_response() -> None:
    obj = shell().from_completion(completion_with("Cut", finish="length"))
    assert obj["status"] == "incomplete"
    assert obj["incomplete_details"] == {"reason": "max_output_tokens"}
    assert obj["output"][0]["status"] == "incomplete"


# --- chat chunks -> Responses events ------------------------------------------------------


def test_text_stream_events_in_order_with_sequence_numbers() -> None:
    events = stream_events(completion_with("Hello there, friend."))
    for event in events:
        EVENTS.validate_python(event)
    kinds = [e["type"] for e in events]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert kinds == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"]
                     + ["response.output_text.delta"] * len(deltas)
                     + ["response.output_text.done", "response.content_part.done",
                        "response.output_item.done", "response.completed"])
    assert len(deltas) > 1 and "".join(deltas) == "Hello there, friend."
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello there, friend."
    assert final["usage"]["input_tokens"] == 12 and final["status"] == "completed"
    assert events[0]["response"]["status"] == "in_progress"


def test_function_call_stream_events() -> None:
    calls = [{"id": "call_9", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    events = stream_events(completion_with(None, calls, finish="tool_calls"))
    for event in events:
        EVENTS.validate_python(event)
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done",
                     "response.completed"]
    assert events[2]["item"]["call_id"] == "call_9" and events[2]["item"]["arguments"] == ""
    assert events[4]["arguments"] == '{"city": "Oslo"}'
    assert events[-1]["response"]["output"][0]["status"] == "completed"


def test_a_broken_stream_fails_the_response_and_closes_its_item() -> None:
    translator = ResponseEvents(shell())
    translator.start()
    translator.feed_chunk({"choices": [{"index": 0, "delta": {"content": "Half"}}]})
    assert translator.feed_chunk({"error": {"message": "upstream stream broke off"}}) == []
    closing, final = translator.finish()
    assert [e["type"] for e in closing][-1] == "response.output_item.done"
    assert closing[-1]["item"]["status"] == "incomplete"
    EVENTS.validate_python(final)
    assert final["type"] == "response.failed"
    assert final["response"]["error"] == {"code": "server_error",
                                          "message": "upstream stream broke off"}


# --- input item pages ---------------------------------------------------------------------


def test_item_pages_follow_order_limit_and_after() -> None:
    items = [{"id": f"msg_{i}"} for i in range(5)]
    first = item_page(items, {"limit": 2, "order": "desc", "after": None})
    assert [i["id"] for i in first["data"]] == ["msg_4", "msg_3"] and first["has_more"]
    assert (first["first_id"], first["last_id"]) == ("msg_4", "msg_3")
    last = item_page(items, {"limit": 2, "order": "asc", "after": "msg_2"})
    assert [i["id"] for i in last["data"]] == ["msg_3", "msg_4"] and not last["has_more"]
    with pytest.raises(InvalidRequest):
        item_page(items, {"limit": 2, "order": "asc", "after": "msg_x"})
