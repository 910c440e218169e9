"""The upstream prompt-cache rule, conversation keys and the client's warm-cache estimate."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import tokens
from proxy.pipeline.prompt_cache import (
    cacheable_tokens,
    conversation_key,
    previous_turn_tokens,
    warm_cached_tokens,
)

SYSTEM = {"role": "system", "content": "You are a coach."}
TOOLS = [{"type": "function", "function": {"name": "log_habit", "parameters": {}}}]


def turns(*texts: str) -> list[dict[str, Any]]:
    """A system prompt and alternating user/assistant messages."""
    return [SYSTEM, *({"role": "user" if i % 2 == 0 else "assistant", "content": t}
                      for i, t in enumerate(texts))]


@pytest.mark.parametrize(("prefix", "cached"), [
    (0, 0), (1023, 0), (1024, 1024), (1151, 1024), (1152, 1152), (2000, 1920)])
def test_openai_caches_from_1024_tokens_in_steps_of_128(prefix: int, cached: int) -> None:
    assert cacheable_tokens(prefix) == cached


def test_every_turn_of_a_conversation_has_its_key() -> None:
    first = conversation_key("alice", turns("hi, I'm Raj"))
    assert first.startswith("pc-")
    assert conversation_key("alice", turns("hi, I'm Raj", "Hi Raj!", "log my run")) == first


@pytest.mark.parametrize(("namespace", "messages"), [
    ("bob", turns("hi, I'm Raj")),
    ("alice", turns("hi, I'm Maya")),
    ("alice", [{"role": "system", "content": "You are a tutor."},
               {"role": "user", "content": "hi, I'm Raj"}]),
])
def test_another_namespace_or_opening_is_another_conversation(
        namespace: str, messages: list[dict[str, Any]]) -> None:
    assert conversation_key(namespace, messages) != conversation_key("alice", turns("hi, I'm Raj"))


def test_the_previous_turn_is_everything_before_the_last_assistant_message() -> None:
    messages = turns("hi", "hello!", "log my run", "Logged.", "thanks")
    body = {"model": "gpt-4o", "messages": messages, "tools": TOOLS}
    assert previous_turn_tokens(body) == tokens.prompt_tokens({**body,
                                                               "messages": messages[:4]})
    assert previous_turn_tokens({"model": "gpt-4o", "messages": turns("hi")}) == 0


def test_the_client_would_have_found_its_previous_turn_cached() -> None:
    long_system = {"role": "system", "content": "Be kind. " * 600}
    body = {"model": "gpt-4o", "messages": [long_system, *turns("hi", "hello!", "more")[1:]]}
    previous = previous_turn_tokens(body)
    assert previous > 1024
    assert warm_cached_tokens(body) == cacheable_tokens(previous) > 0
    assert warm_cached_tokens({"model": "gpt-4o", "messages": turns("hi", "hey", "yo")}) == 0
