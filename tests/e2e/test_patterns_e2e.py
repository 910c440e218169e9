"""Pattern replies end to end through the official openai SDK, with the default rules."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.testing import LiveProxy

DEFAULT_RULES = (Path(__file__).resolve().parents[2] / "rules" / "config.toml").read_text()
HI = [{"role": "user", "content": "Heyyy!! 👋"}]
TOOL = {"type": "function", "function": {"name": "log_habit", "parameters": {
    "type": "object", "properties": {"habit": {"type": "string"}}}}}


@pytest.fixture
def coach(tmp_path: Path) -> Iterator[LiveProxy]:
    """A proxy running the default rule file."""
    with LiveProxy(tmp_path, rules=DEFAULT_RULES) as proxy:
        yield proxy


def test_greeting_gets_a_free_completion_and_upstream_gets_nothing(coach: LiveProxy) -> None:
    raw = coach.client().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    completion = raw.parse()
    assert raw.headers["x-proxy-stage"] == "pattern"
    assert completion.object == "chat.completion" and completion.model == "gpt-4o"
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 0
    assert len(coach.fake.received) == 0


def test_async_client_gets_the_pattern_reply(coach: LiveProxy) -> None:
    async def ask() -> str:
        client = coach.async_client()
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Thanks!! 🙏"}])
        await client.close()
        return str(completion.choices[0].message.content)

    assert asyncio.run(ask()) in {"Anytime! 💪", "You got it.", "Happy to help. Keep going!"}
    assert len(coach.fake.received) == 0


def test_streamed_pattern_reply_parses_as_chunks(coach: LiveProxy) -> None:
    stream = coach.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "done!"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text in {"Nice work! 💪", "Logged. Keep it going.", "That's how it's done 🔥"}
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0
    assert {c.model for c in chunks} == {"gpt-4o"}
    assert len(coach.fake.received) == 0


def test_placeholder_reply_uses_metadata(coach: LiveProxy) -> None:
    completion = coach.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "done"}],
        metadata={"streak": "9"})
    assert completion.choices[0].message.content.startswith(("9 days", "Nice streak! 9 days"))


@pytest.mark.parametrize(
    "extra",
    [{"n": 2}, {"tools": [TOOL], "tool_choice": "required"},
     {"response_format": {"type": "json_object"}}],
    ids=["n", "forced-tool", "json"],
)
def test_requests_that_need_a_model_bypass_patterns(coach: LiveProxy, extra: dict) -> None:
    raw = coach.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HI, **extra)
    assert raw.headers["x-proxy-stage"] == "upstream"
    assert coach.fake.received[-1]["messages"] == HI


@pytest.mark.parametrize("text", ["not done", "done?", "done with this app"])
def test_look_alikes_go_upstream(coach: LiveProxy, text: str) -> None:
    raw = coach.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}])
    assert raw.headers["x-proxy-stage"] == "upstream"
    assert coach.fake.received[-1]["messages"][-1]["content"] == text


def test_ledger_rows_show_pattern_replies_free_with_a_baseline(coach: LiveProxy) -> None:
    client = coach.client()
    client.chat.completions.create(model="gpt-4o", messages=HI)
    list(client.chat.completions.create(model="gpt-4o", messages=HI, stream=True))
    rows = coach.ledger_rows()
    assert [r["stage"] for r in rows] == ["pattern", "pattern"]
    assert all(r["cost_usd"] == 0 and r["baseline_usd"] > 0 for r in rows)
