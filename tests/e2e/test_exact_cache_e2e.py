"""The exact cache end to end, through the official openai SDK against a live proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.pipeline.stages.exact_cache import exact_entries
from proxy.testing import LiveProxy, admin_call

# These tests are about the cache's mechanics on any message: answers are shared across
# users whatever the message (`share = "all"`); context-safe sharing has its own tests
# (test_context_safe_e2e.py).
RULES = 'pipeline = ["exact_cache"]\n[exact_cache]\nshare = "all"\n'
REDIS_URL = "redis://127.0.0.1:6379/0"
ASK = [{"role": "user", "content": "What is a good morning routine?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}


def rules(**fields: Any) -> str:
    """The rule file with exact_cache only, plus fields of its table."""
    return RULES + "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n"
                           for k, v in fields.items())


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    with LiveProxy(tmp_path, rules=rules()) as proxy:
        yield proxy


def ask(live: LiveProxy, key: str = "alice", stream: bool = False,
        headers: dict[str, str] | None = None, **params: Any) -> tuple[str, str | None, Any]:
    """(content, x-proxy-cache, finish_reason or error) of one request, streamed or not."""
    params = {"model": "gpt-4o", "messages": ASK, **params}
    client = live.client(key)
    if not stream:
        raw = client.chat.completions.with_raw_response.create(extra_headers=headers, **params)
        choice = raw.parse().choices[0]
        return choice.message.content or "", raw.headers.get("x-proxy-cache"), choice.finish_reason
    with client.chat.completions.with_streaming_response.create(
            stream=True, extra_headers=headers, **params) as resp:
        chunks = list(resp.parse())
        cache = resp.headers.get("x-proxy-cache")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next(c.choices[0].finish_reason for c in chunks
                  if c.choices and c.choices[0].finish_reason)
    return text, cache, finish


def settle(live: LiveProxy) -> None:
    """Let the write-behind queue finish (eviction, purge and restart checks)."""
    live.run(exact_entries(live.resources).drain())


def test_identical_request_twice_calls_upstream_once(live: LiveProxy) -> None:
    first = ask(live)
    second = ask(live)
    assert first[1] == "miss" and second[1] == "hit-exact"
    assert second[0] == first[0] and second[2] == first[2] == "stop"
    assert len(live.fake.received) == 1


@pytest.mark.parametrize(("first_stream", "second_stream"),
                         [(True, True), (True, False), (False, True), (False, False)])
def test_hit_replays_across_stream_modes(live: LiveProxy, first_stream: bool,
                                         second_stream: bool) -> None:
    content, cache, finish = ask(live, stream=first_stream)
    assert cache == "miss"
    if first_stream:
        settle(live)  # a stream is stored after [DONE], once the response has ended
    assert ask(live, stream=second_stream) == (content, "hit-exact", finish)
    assert len(live.fake.received) == 1


@pytest.mark.parametrize("include_usage", [True, False])
def test_streamed_hit_sends_usage_chunk_only_when_asked(live: LiveProxy,
                                                        include_usage: bool) -> None:
    original = live.client().chat.completions.create(model="gpt-4o", messages=ASK)
    chunks = list(live.client().chat.completions.create(
        model="gpt-4o", messages=ASK, stream=True,
        stream_options={"include_usage": include_usage}))
    usages = [c.usage for c in chunks if c.usage is not None]
    assert usages == ([original.usage] if include_usage else [])


def test_async_client_gets_hit_for_repeat(live: LiveProxy) -> None:
    async def twice() -> list[str]:
        client = live.async_client()
        texts = []
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(model="gpt-4o",
                                                                         messages=ASK)
            text = raw.parse().choices[0].message.content
            texts.append(raw.headers["x-proxy-cache"] + ":" + text)
        await client.close()
        return texts

    miss, hit = asyncio.run(twice())
    assert miss.startswith("miss:") and hit.startswith("hit-exact:")
    assert miss.partition(":")[2] == hit.partition(":")[2]
    assert len(live.fake.received) == 1


@pytest.mark.parametrize("changed", [
    {"temperature": 0.2}, {"top_p": 0.5}, {"seed": 7}, {"max_tokens": 5}, {"stop": ["."]},
    {"presence_penalty": 0.5}, {"frequency_penalty": 0.5},
    {"response_format": {"type": "json_object"}},
    {"tools": [WEATHER_TOOL]}, {"model": "gpt-4o-mini"},
    {"messages": [{"role": "user", "content": "What is a good evening routine?"}]},
])
def test_a_changed_parameter_misses(live: LiveProxy, changed: dict[str, Any]) -> None:
    ask(live, temperature=0.7)
    assert ask(live, **{"temperature": 0.7, **changed})[1] == "miss"
    assert len(live.fake.received) == 2


@pytest.mark.parametrize("extra", [{"user": "end-user-2"}, {"metadata": {"trace": "x"}},
                                   {"stream_options": None}])
def test_fields_that_do_not_change_the_answer_still_hit(live: LiveProxy,
                                                        extra: dict[str, Any]) -> None:
    ask(live, user="end-user-1")
    assert ask(live, **extra)[1] == "hit-exact"
    assert len(live.fake.received) == 1


def test_per_user_rule_keeps_end_users_apart(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=rules(per_user=True)) as live:
        ask(live, user="u1")
        assert ask(live, user="u2")[1] == "miss"
        assert ask(live, user="u1")[1] == "hit-exact"
        assert len(live.fake.received) == 2


def test_another_keys_identical_request_misses(live: LiveProxy) -> None:
    ask(live, "alice")
    assert ask(live, "bob")[1] == "miss"
    assert len(live.fake.received) == 2


def test_keys_sharing_a_namespace_share_the_cache(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=rules(), config={"keys": {"bob": {"namespace": "alice"}}}
                   ) as live:
        ask(live, "alice")
        assert ask(live, "bob")[1] == "hit-exact"
        assert len(live.fake.received) == 1


@pytest.mark.parametrize(("directive", "second_cache", "third_cache", "upstream_calls"), [
    ("no-cache", "bypass", "hit-exact", 2),   # not read, but the fresh answer is stored
    ("refresh", "bypass", "hit-exact", 2),
    ("no-store", "bypass", "hit-exact", 2),   # neither read nor stored; the old entry stays
])
def test_cache_directive_on_a_repeat(live: LiveProxy, directive: str, second_cache: str,
                                     third_cache: str, upstream_calls: int) -> None:
    ask(live)
    assert ask(live, headers={"x-proxy-cache": directive})[1] == second_cache
    assert ask(live)[1] == third_cache
    assert len(live.fake.received) == upstream_calls


def test_no_store_on_a_first_request_stores_nothing(live: LiveProxy) -> None:
    ask(live, headers={"x-proxy-cache": "no-store"})
    settle(live)
    assert ask(live)[1] == "miss"
    assert len(live.fake.received) == 2


@pytest.mark.parametrize(("directive", "third_cache"), [("refresh", "miss"),
                                                        ("no-cache", "hit-exact")])
def test_refresh_drops_the_stored_answer_even_when_the_fresh_one_fails(
        live: LiveProxy, directive: str, third_cache: str) -> None:
    ask(live)
    live.fake.fail("400")
    with pytest.raises(openai.BadRequestError):
        ask(live, headers={"x-proxy-cache": directive})
    settle(live)
    assert ask(live)[1] == third_cache


@pytest.mark.parametrize(("params", "rule"), [
    ({"n": 2}, {}),
    ({"messages": [{"role": "user", "content": f"q{i}"} for i in range(5)]}, {}),
    ({}, {"cache_sampled": False}),
    ({"temperature": 0.5}, {"cache_sampled": False}),
    ({"messages": [{"role": "user", "content": "get weather in Paris"}],
      "tools": [WEATHER_TOOL]}, {}),
    ({}, {"enabled": False}),
])
def test_uncacheable_requests_go_upstream_every_time(tmp_path: Path, params: dict[str, Any],
                                                     rule: dict[str, Any]) -> None:
    with LiveProxy(tmp_path, rules=rules(**rule)) as live:
        for _ in range(2):
            live.client().chat.completions.create(**{"model": "gpt-4o", "messages": ASK,
                                                     **params})
        settle(live)
        assert len(live.fake.received) == 2


@pytest.mark.parametrize("rule", [{"cache_sampled": False}, {}])
def test_temperature_zero_is_cached_under_any_sampling_rule(tmp_path: Path,
                                                            rule: dict[str, Any]) -> None:
    with LiveProxy(tmp_path, rules=rules(**rule)) as live:
        ask(live, temperature=0)
        assert ask(live, temperature=0)[1] == "hit-exact"


def test_tool_call_answers_are_replayed_when_the_rule_allows(tmp_path: Path) -> None:
    params = {"messages": [{"role": "user", "content": "get weather in Paris"}],
              "tools": [WEATHER_TOOL]}
    with LiveProxy(tmp_path, rules=rules(cache_tool_calls=True)) as live:
        first = live.client().chat.completions.create(model="gpt-4o", **params)
        second = live.client().chat.completions.create(model="gpt-4o", **params)
        assert second.choices[0].message.tool_calls == first.choices[0].message.tool_calls
        assert len(live.fake.received) == 1


def test_truncated_answer_is_cached_with_its_finish_reason(live: LiveProxy) -> None:
    first = ask(live, max_tokens=3)
    assert first[2] == "length"
    assert ask(live, max_tokens=3) == (first[0], "hit-exact", "length")


@pytest.mark.parametrize("fault", ["400", "cut"])
def test_failed_answers_are_not_stored(live: LiveProxy, fault: str) -> None:
    live.fake.fail(fault)
    with pytest.raises(openai.APIError):
        ask(live, stream=fault == "cut")
    settle(live)
    assert ask(live)[1] == "miss"
    assert len(live.fake.received) == 2


def test_stream_the_client_aborts_is_not_stored(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=rules()) as live:
        live.fake.tokens_per_second = 40  # one chunk every 50 ms: the abort lands mid-stream
        stream = live.client().chat.completions.create(model="gpt-4o", messages=ASK,
                                                       stream=True)
        next(iter(stream))
        stream.close()
        deadline = time.monotonic() + 10
        while not live.ledger_rows() and time.monotonic() < deadline:
            time.sleep(0.05)
        settle(live)
        assert live.ledger_rows()[0]["status"] == 499
        live.fake.tokens_per_second = 0
        assert ask(live)[1] == "miss"


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_entries_survive_a_restart(tmp_path: Path, backend: str,
                                   redis_storage: dict[str, Any]) -> None:
    config = redis_storage if backend == "redis" else None
    with LiveProxy(tmp_path, rules=rules(), config=config) as live:
        first = ask(live, stream=True)
    with LiveProxy(tmp_path, rules=rules(), config=config) as live:
        assert ask(live) == (first[0], "hit-exact", "stop")
        assert len(live.fake.received) == 0


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_least_recently_used_entry_is_evicted_at_max_entries(
        tmp_path: Path, backend: str, redis_storage: dict[str, Any]) -> None:
    config = redis_storage if backend == "redis" else None
    with LiveProxy(tmp_path, rules=rules(max_entries=2), config=config) as live:
        for question in ("q1", "q2", "q1", "q3"):  # q1 used again: q2 is the oldest
            ask(live, messages=[{"role": "user", "content": question}])
            settle(live)
        outcomes = [ask(live, messages=[{"role": "user", "content": q}])[1]
                    for q in ("q1", "q3", "q2")]
        assert outcomes == ["hit-exact", "hit-exact", "miss"]


def test_admin_purges_one_namespace(live: LiveProxy) -> None:
    ask(live, "alice")
    ask(live, "bob")
    status, body = admin_call(live, "DELETE", "/v1/proxy/cache/alice", "admin")
    assert (status, body["purged"]) == (200, {"exact_cache": 1})
    assert ask(live, "alice")[1] == "miss"
    assert ask(live, "bob")[1] == "hit-exact"


def test_tenant_key_may_not_purge(live: LiveProxy) -> None:
    ask(live, "alice")
    status, body = admin_call(live, "DELETE", "/v1/proxy/cache/alice", "bob")
    assert (status, body["error"]["code"]) == (403, "permission_denied")
    assert ask(live, "alice")[1] == "hit-exact"


def test_ledger_reports_hits_as_free_with_a_baseline(live: LiveProxy) -> None:
    ask(live)
    ask(live, stream=True)
    miss, hit = live.ledger_rows()
    assert (miss["stage"], hit["stage"]) == ("upstream", "exact_cache")
    assert miss["cost_usd"] > 0 and hit["cost_usd"] == 0
    assert hit["baseline_usd"] == pytest.approx(miss["cost_usd"])
    assert hit["prompt_tokens"] == hit["completion_tokens"] == 0


def test_requests_are_answered_while_the_cache_store_is_down(tmp_path: Path) -> None:
    down = {"storage": {"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"}}
    with LiveProxy(tmp_path, rules=rules(), config=down) as live:
        assert ask(live)[1] == "miss"
        settle(live)  # the write failed in the background
        assert ask(live)[1] == "miss"
        assert len(live.fake.received) == 2


def test_entries_outlive_a_rules_reload(live: LiveProxy) -> None:
    ask(live)
    assert live.reload_rules(rules(ttl_seconds=600))
    assert ask(live)[1] == "hit-exact"
