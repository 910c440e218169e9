"""The fake upstream's prompt cache behaves like OpenAI's prefix cache."""

from __future__ import annotations

from typing import Any

from proxy.upstream.fake_cache import FakePromptCache, prompt_token_ids

LONG = {"role": "system", "content": "Keep answers short and kind. " * 300}
TOOLS = [{"type": "function", "function": {"name": "log_habit", "parameters": {}}}]


def body(*user: str, **extra: Any) -> dict[str, Any]:
    """A gpt-4o request: the long system prompt, then alternating user/assistant turns."""
    messages = [LONG, *({"role": "user" if i % 2 == 0 else "assistant", "content": t}
                        for i, t in enumerate(user))]
    return {"model": "gpt-4o", "messages": messages, **extra}


def test_a_prompt_below_1024_tokens_is_never_cached() -> None:
    cache = FakePromptCache()
    short = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert (cache.read_and_write(short), cache.read_and_write(short)) == (0, 0)


def test_the_next_turn_reads_the_previous_prompt_in_128_token_steps() -> None:
    cache = FakePromptCache()
    first = body("hi")
    assert cache.read_and_write(first) == 0
    seen = len(prompt_token_ids(first))
    cached = cache.read_and_write(body("hi", "hello!", "log my run"))
    assert cached == 1024 + (seen - 1024) // 128 * 128


def test_changed_tools_another_model_or_key_start_over() -> None:
    cache = FakePromptCache()
    cache.read_and_write(body("hi"))
    assert cache.read_and_write(body("hi", "hello!", "x", tools=TOOLS)) == 0
    assert cache.read_and_write({**body("hi", "hello!", "x"), "model": "gpt-4o-mini"}) == 0
    assert cache.read_and_write(body("hi", "hello!", "x", prompt_cache_key="other")) == 0
    assert cache.read_and_write(body("hi", "hello!", "x")) > 0


def test_a_prefix_expires_after_the_ttl_of_the_clock() -> None:
    now = [0.0]
    cache = FakePromptCache(ttl=600.0, clock=lambda: now[0])
    cache.read_and_write(body("hi"))
    now[0] = 599.0
    assert cache.read_and_write(body("hi", "hello!", "more")) > 0
    now[0] = 599.0 + 601.0
    assert cache.read_and_write(body("hi", "hello!", "more", "ok", "again")) == 0
