"""Units behind billing streams the client left: the completion meter, the drain, the tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from proxy import tokens
from proxy.pipeline.drain import drain
from proxy.pipeline.replies import completion_to_events, make_completion
from proxy.tasks import BackgroundTasks
from proxy.upstream.meter import BATCH_BYTES, CompletionMeter
from proxy.upstream.sse import event

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Tell me a story"}]}


def delta_event(delta: dict[str, Any], usage: dict[str, int] | None = None) -> bytes:
    return event({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                  "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                  "usage": usage})


def test_meter_counts_content_refusals_and_tool_calls_but_not_framing() -> None:
    meter = CompletionMeter("gpt-4o-mini")
    meter.feed(delta_event({"role": "assistant", "content": ""}))
    meter.feed(delta_event({"content": "Once "}))
    meter.feed(delta_event({"content": 'upon a "time"\n\u00e9'}) + b": keep-alive\n\n")
    meter.feed(delta_event({"refusal": " I cannot"}) + b"data: {not json\n\n")
    meter.feed(delta_event({"tool_calls": [{"index": 0, "function": {"name": "get_weather",
                                                                     "arguments": '{"city"'}}]}))
    meter.feed(event({"choices": [], "usage": {"prompt_tokens": 9}}) + b"data: [DONE]\n\n")
    usage = meter.usage(BODY)
    texts = 'Once upon a "time"\n\u00e9 I cannotget_weather{"city"'
    assert usage.completion_tokens == tokens.count_text(texts, "gpt-4o-mini")
    assert usage.prompt_tokens == tokens.count_request(BODY)


def test_meter_counts_a_long_stream_in_batches_about_as_whole() -> None:
    text = "All work and no play makes Jack a dull boy. " * 2000
    events = completion_to_events(make_completion("gpt-4o-mini", text), include_usage=False,
                                  piece_chars=8)
    assert sum(map(len, events)) > 4 * BATCH_BYTES
    meter = CompletionMeter("gpt-4o-mini")
    for item in events:
        meter.feed(item)
    counted, whole = meter.usage(BODY).completion_tokens, tokens.count_text(text, "gpt-4o-mini")
    assert whole <= counted <= whole * 1.01  # a batch edge may split a word in two tokens


async def endless(closed: list[bool], every: float = 0.0) -> AsyncIterator[bytes]:
    try:
        while True:
            await asyncio.sleep(every)
            yield b"x" * 100
    finally:
        closed.append(True)


def test_drain_reads_a_stream_to_its_end() -> None:
    async def three() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"data: {}\n\n"

    assert asyncio.run(drain(three(), seconds=10, max_bytes=1000)) is None


def test_drain_stops_past_its_byte_bound() -> None:
    async def go() -> tuple[str | None, list[bool]]:
        closed: list[bool] = []
        why = await drain(endless(closed), seconds=60, max_bytes=1000)
        return why, list(closed)  # before asyncio.run finalizes the generator

    why, closed = asyncio.run(go())
    assert why is not None and "1000 bytes" in why
    assert not closed  # the caller closes it (its end hooks run then)


def test_drain_stops_at_its_time_bound() -> None:
    closed: list[bool] = []
    why = asyncio.run(drain(endless(closed, every=0.01), seconds=0.1, max_bytes=10**9))
    assert why is not None and "0.1s" in why


def test_background_tasks_are_cancelled_after_the_grace_and_clean_up() -> None:
    cleaned: list[str] = []

    async def work(name: str, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        finally:
            cleaned.append(name)

    async def go() -> int:
        tasks = BackgroundTasks()
        tasks.start(work("quick", 0.0), name="quick")
        tasks.start(work("endless", 3600), name="endless")
        await tasks.aclose(grace=0.05)
        return len(tasks)

    assert asyncio.run(go()) == 0
    assert sorted(cleaned) == ["endless", "quick"]
