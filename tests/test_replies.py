"""Free answers as completions and streams; streams assembled back."""

from __future__ import annotations

import pytest

from proxy.pipeline.replies import StreamAssembler, completion_to_events, make_completion


@pytest.mark.parametrize("include_usage", [True, False])
def test_completion_survives_a_round_trip_through_events(include_usage: bool) -> None:
    original = make_completion("gpt-4o", "x" * 130, prompt_tokens=5, completion_tokens=9)
    events = completion_to_events(original, include_usage=include_usage)
    assert events[-1] == b"data: [DONE]\n\n"
    assembler = StreamAssembler()
    assembler.feed_events(events)
    rebuilt = assembler.completion()
    assert assembler.done
    assert rebuilt["choices"][0]["message"]["content"] == "x" * 130
    assert rebuilt["choices"][0]["finish_reason"] == "stop"
    assert rebuilt["id"] == original["id"]
    assert (rebuilt["usage"] == original["usage"]) is include_usage


def test_tool_calls_are_reassembled_from_fragments() -> None:
    assembler = StreamAssembler()
    base = {"id": "c", "created": 1, "model": "m"}
    parts = [{"index": 0, "id": "call_1", "type": "function",
              "function": {"name": "get_", "arguments": '{"ci'}},
             {"index": 0, "function": {"name": "weather", "arguments": 'ty": "Paris"}'}}]
    for part in parts:
        assembler.feed_chunk({**base, "choices": [{"index": 0, "delta": {"tool_calls": [part]}}]})
    call = assembler.completion()["choices"][0]["message"]["tool_calls"][0]
    assert call == {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
