"""Free answers as completions and streams; streams assembled back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.pipeline.core import Reply
from proxy.pipeline.replies import (
    StreamAssembler,
    completion_to_events,
    make_completion,
    when_answered,
)


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


def _stream_reply(events: list[bytes]) -> Reply:
    async def chunks() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    return Reply(chunks=chunks(), completed=True)


def test_every_hook_gets_the_answer_from_one_assembly() -> None:
    original = make_completion("gpt-4o", "hello there", prompt_tokens=3, completion_tokens=2)
    reply = _stream_reply(completion_to_events(original, include_usage=True))
    seen: list[tuple[str, Any]] = []
    when_answered(reply, lambda c: _note(seen, "inner", c))
    tapped = reply.chunks
    when_answered(reply, lambda c: _note(seen, "outer", c))
    assert reply.chunks is tapped  # the second hook did not wrap the stream again
    received = asyncio.run(_read(reply))
    assert received == completion_to_events(original, include_usage=True)  # passed unchanged
    assert [name for name, _ in seen] == ["inner", "outer"]
    assert all(c["choices"][0]["message"]["content"] == "hello there" for _, c in seen)


def test_no_hook_runs_for_a_stream_cut_before_its_end() -> None:
    events = completion_to_events(make_completion("gpt-4o", "hello"), include_usage=False)
    reply = _stream_reply(events[:-1])  # no [DONE]
    seen: list[tuple[str, Any]] = []
    when_answered(reply, lambda c: _note(seen, "cache", c))
    asyncio.run(_read(reply))
    assert seen == []


async def _note(seen: list[tuple[str, Any]], name: str, completion: Any) -> None:
    seen.append((name, completion))


async def _read(reply: Reply) -> list[bytes]:
    assert reply.chunks is not None
    return [piece async for piece in reply.chunks]
