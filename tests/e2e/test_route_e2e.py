"""Model routing end to end through the official openai SDK, with the default rules."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.testing import LiveProxy
from proxy.upstream.fake import FakeUpstream

DEFAULT_RULES = (Path(__file__).resolve().parents[2] / "rules" / "config.toml").read_text()


def later_turn(text: str) -> list[dict[str, str]]:
    """A conversation past its first three user messages, ending in `text`."""
    messages = []
    for i in range(4):
        messages += [{"role": "user", "content": f"update number {i} on my running"},
                     {"role": "assistant", "content": "Noted."}]
    return messages + [{"role": "user", "content": text}]


@pytest.fixture
def coach(tmp_path: Path) -> Iterator[LiveProxy]:
    """A proxy running the default rule file."""
    with LiveProxy(tmp_path, rules=DEFAULT_RULES) as proxy:
        yield proxy


@pytest.mark.parametrize(
    ("messages", "routed"),
    [
        ([{"role": "user", "content": "I want to run a 5k this spring"}], "gpt-4o"),
        (later_turn("feeling a bit tired today"), "gpt-4o-mini"),
        (later_turn("why do I keep skipping my evening runs"), "gpt-4o"),
    ],
    ids=["first-messages", "short-simple", "depth"],
)
def test_auto_is_routed_and_reported(coach: LiveProxy, messages: list, routed: str) -> None:
    raw = coach.client().chat.completions.with_raw_response.create(model="auto",
                                                                   messages=messages)
    assert coach.fake.received[-1]["model"] == routed
    assert raw.headers["x-proxy-model"] == routed
    assert raw.parse().model == routed  # the body keeps what upstream said


def test_optimize_for_header_overrides_the_first_messages_rule(coach: LiveProxy) -> None:
    client = coach.client(default_headers={"x-proxy-optimize-for": "cost"})
    raw = client.chat.completions.with_raw_response.create(
        model="coach", messages=[{"role": "user", "content": "I want to run a 5k this spring"}])
    assert coach.fake.received[-1]["model"] == "gpt-4o-mini"
    assert raw.headers["x-proxy-model"] == "gpt-4o-mini"


def test_explicit_model_reaches_upstream_unchanged(coach: LiveProxy) -> None:
    coach.client().chat.completions.create(model="gpt-4o", messages=later_turn("ok so what now"))
    assert coach.fake.received[-1]["model"] == "gpt-4o"


def test_streamed_routed_request_reports_the_model(coach: LiveProxy) -> None:
    async def ask() -> tuple[str, list[str]]:
        client = coach.async_client()
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=later_turn("feeling a bit tired today"), stream=True)
        models = [chunk.model async for chunk in raw.parse()]
        await client.close()
        return raw.headers["x-proxy-model"], models

    header, models = asyncio.run(ask())
    assert header == "gpt-4o-mini" and set(models) == {"gpt-4o-mini"}
    assert coach.fake.received[-1]["model"] == "gpt-4o-mini"


def test_routed_model_falls_back_when_its_upstream_fails(tmp_path: Path) -> None:
    fake = FakeUpstream()
    with LiveProxy(tmp_path, rules=DEFAULT_RULES, fake=fake,
                   config={"fallbacks": {"gpt-4o": ["fake:gpt-4.1"]}}) as live:
        fake.fail("500", count=-1, model="gpt-4o")
        raw = live.client().chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "I want to run a 5k"}])
        rows = live.ledger_rows()
    assert [b["model"] for b in fake.received] == ["gpt-4o"] * 3 + ["gpt-4.1"]
    assert raw.headers["x-proxy-model"] == "gpt-4.1" and raw.parse().model == "gpt-4.1"
    assert rows[-1]["model"] == "gpt-4.1" and rows[-1]["requested_model"] == "auto"


def test_route_decision_is_in_the_ledger_trace(coach: LiveProxy) -> None:
    coach.client().chat.completions.create(model="auto",
                                           messages=later_turn("help me plan my week"))
    trace = json.loads(coach.ledger_rows()[-1]["trace"])
    decision = next(d for d in trace if d["stage"] == "route")
    assert decision["rule"] == "needs-depth" and decision["to_model"] == "gpt-4o"
    assert decision["nearest"] and decision["margin"] >= 0.01  # explained by its examples
    assert decision["confidence"] == 0.75
