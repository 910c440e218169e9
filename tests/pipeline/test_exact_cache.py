"""Exact cache units: the request key, the rules, what is cached, dry runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.auth import Tenant
from proxy.config import ConfigError, Section
from proxy.pipeline.core import Context, Reply
from proxy.pipeline.replies import make_completion
from proxy.pipeline.stages.exact_cache import (
    ExactCache,
    Policy,
    Rules,
    parse_rules,
    request_key,
    uncacheable_request,
    unstorable_reply,
)
from proxy.store.cache_entries import CacheEntries, SizeLimits
from proxy.store.kv import KVUsage, SqliteKV
from proxy.store.sqlite import open_db

BODY: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                        "temperature": 0.7}


def key(body: dict[str, Any], namespace: str = "alice", model: str = "gpt-4o",
        per_user: bool = False) -> str:
    return request_key(body, namespace, model, per_user)


@pytest.mark.parametrize("extra", [
    {"stream": True}, {"stream_options": {"include_usage": True}}, {"user": "u1"},
    {"metadata": {"a": "b"}}, {"store": True}, {"service_tier": "auto"},
    {"model": "routed-elsewhere"},
])
def test_key_ignores_fields_that_do_not_change_the_answer(extra: dict[str, Any]) -> None:
    assert key({**BODY, **extra}) == key(BODY)


@pytest.mark.parametrize("extra", [
    {"temperature": 0.2}, {"top_p": 0.1}, {"n": 2}, {"seed": 1}, {"max_tokens": 9},
    {"max_completion_tokens": 9}, {"stop": "x"}, {"presence_penalty": 1},
    {"frequency_penalty": 1}, {"logit_bias": {"50256": -100}}, {"logprobs": True},
    {"top_logprobs": 2}, {"reasoning_effort": "low"}, {"tools": []}, {"tool_choice": "none"},
    {"response_format": {"type": "json_object"}}, {"some_future_param": 1},
    {"messages": [{"role": "user", "content": "hi!"}]},
])
def test_key_changes_with_every_field_that_can_change_the_answer(extra: dict[str, Any]) -> None:
    assert key({**BODY, **extra}) != key(BODY)


def test_key_depends_on_namespace_and_requested_model() -> None:
    assert len({key(BODY), key(BODY, namespace="bob"), key(BODY, model="gpt-4o-mini")}) == 3


def test_key_ignores_field_order() -> None:
    assert key(dict(reversed(list(BODY.items())))) == key(BODY)


def test_per_user_key_includes_the_end_user() -> None:
    assert key({**BODY, "user": "u1"}, per_user=True) != key({**BODY, "user": "u2"},
                                                             per_user=True)


def parse(table: dict[str, Any]) -> Rules:
    return parse_rules(Section(table, "rules.toml", "exact_cache"))


def test_defaults_are_the_product_policy() -> None:
    rules = parse({})
    assert rules.default == Policy(ttl_seconds=86_400, per_user=False, cache_sampled=True,
                                   cache_tool_calls=False, max_user_messages=4)
    assert rules.limits == SizeLimits(10_000, 64 * 1024 * 1024)


def test_first_matching_rule_overrides_and_per_user_gets_the_user_ttl() -> None:
    rules = parse({"ttl_seconds": 600, "rules": [
        {"models": ["gpt-4o*"], "keys": ["alice"], "per_user": True},
        {"models": ["gpt-4o*"], "enabled": False},
    ]})
    assert rules.policy_for("gpt-4o-mini", "alice") == Policy(ttl_seconds=3_600, per_user=True)
    assert rules.policy_for("gpt-4o", "bob").enabled is False
    assert rules.policy_for("gpt-5", "alice") == Policy(ttl_seconds=600)


@pytest.mark.parametrize(("table", "message"), [
    ({"ttl": 5}, "unknown field(s) ['ttl']"),
    ({"ttl_seconds": "a day"}, "[exact_cache] ttl_seconds: expected a number"),
    ({"max_entries": 0}, "max_entries: must be >= 1"),
    ({"rules": [{"model": ["x"]}]}, "[exact_cache.rules.0] unknown field(s) ['model']"),
])
def test_bad_rules_are_refused_naming_file_table_and_field(table: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(table)
    assert "rules.toml" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(("body", "policy", "reason"), [
    (BODY, Policy(), None),
    ({**BODY, "n": 3}, Policy(), "n > 1"),
    (BODY, Policy(enabled=False), "disabled"),
    (BODY, Policy(cache_sampled=False), "sampled"),
    ({"messages": BODY["messages"]}, Policy(cache_sampled=False), "sampled"),
    ({**BODY, "temperature": 0}, Policy(cache_sampled=False), None),
    ({"messages": BODY["messages"] * 3}, Policy(max_user_messages=2), "context-dependent"),
    ({"messages": BODY["messages"] * 2}, Policy(max_user_messages=2), None),
    ({**BODY, "logprobs": True}, Policy(), "logprobs"),
    ({**BODY, "modalities": ["text", "audio"]}, Policy(), "audio"),
])
def test_which_requests_are_cacheable(body: dict[str, Any], policy: Policy,
                                      reason: str | None) -> None:
    got = uncacheable_request(body, policy)
    assert got is None if reason is None else reason in (got or "")


def ctx_for(body: dict[str, Any], dry_run: bool = False) -> Context:
    return Context(request_id="r1", tenant=Tenant("alice", "h", "alice"), body=dict(body),
                   dry_run=dry_run)


def completion(finish: str = "stop", tool_calls: bool = False, choices: int = 1) -> dict:
    done = make_completion("gpt-4o", "answer", prompt_tokens=3, completion_tokens=1,
                           finish_reason=finish)
    if tool_calls:
        done["choices"][0]["message"]["tool_calls"] = [{"id": "c", "type": "function",
                                                        "function": {"name": "f",
                                                                     "arguments": "{}"}}]
    done["choices"] = done["choices"] * choices
    return done


@pytest.mark.parametrize(("reply", "done", "policy", "reason"), [
    (Reply(), completion(), Policy(), None),
    (Reply(stage="semantic_cache"), completion(), Policy(), "answered by semantic_cache"),
    (Reply(status=500), completion(), Policy(), "not a complete answer"),
    (Reply(error="broke off"), completion(), Policy(), "not a complete answer"),
    (Reply(chunks=object()), completion(), Policy(), "before [DONE]"),  # type: ignore[arg-type]
    (Reply(), completion(choices=2), Policy(), "single-choice"),
    (Reply(), completion("tool_calls", tool_calls=True), Policy(), "tool_calls"),
    (Reply(), completion("tool_calls", tool_calls=True), Policy(cache_tool_calls=True), None),
    (Reply(), completion("length"), Policy(), None),
    (Reply(), completion("length"), Policy(cache_truncated=False), "'length'"),
    (Reply(), completion("content_filter"), Policy(), "'content_filter'"),
    (Reply(), completion(None), Policy(), "None"),  # type: ignore[arg-type]
])
def test_which_answers_are_stored(reply: Reply, done: dict, policy: Policy,
                                  reason: str | None) -> None:
    got = unstorable_reply(ctx_for(BODY), reply, done, policy)
    assert got is None if reason is None else reason in (got or "")


def test_answer_from_a_fallback_model_is_not_stored() -> None:
    ctx = ctx_for(BODY)
    ctx.decide("upstream", "fallback", "gpt-4o failed")
    assert unstorable_reply(ctx, Reply(), completion(), Policy()) == "answered by a fallback model"


@pytest.fixture
async def entries(tmp_path: Path) -> AsyncIterator[CacheEntries]:
    db = await open_db(str(tmp_path / "kv.db"))
    kv = SqliteKV(db)
    await kv.start()
    yield CacheEntries(kv, "exact")
    await db.close()


async def upstream(ctx: Context) -> Reply:
    return Reply(body=orjson.dumps(completion()), model=ctx.model)


async def test_dry_run_looks_up_but_never_stores(entries: CacheEntries) -> None:
    stage = ExactCache(Rules(), entries)
    ctx = ctx_for(BODY, dry_run=True)
    await stage(ctx, upstream)
    await entries.drain()
    assert [d.action for d in ctx.trace] == ["miss"]
    assert await entries.kv.usage("exact:alice") == KVUsage(0, 0)


async def test_dry_run_reports_a_hit_it_would_serve(entries: CacheEntries) -> None:
    stage = ExactCache(Rules(), entries)
    await stage(ctx_for(BODY), upstream)
    ctx = ctx_for(BODY, dry_run=True)
    reply = await stage(ctx, upstream)
    assert (reply.stage, ctx.trace[-1].action) == ("exact_cache", "hit")
    assert reply.usage is None and reply.saved_usage is not None
    assert reply.saved_usage.prompt_tokens == 3
    await entries.aclose()


async def test_unreadable_entry_is_a_miss_and_dropped(entries: CacheEntries) -> None:
    stage = ExactCache(Rules(), entries)
    ctx = ctx_for(BODY)
    await entries.kv.put("exact:alice", request_key(BODY, "alice", "gpt-4o", False), b"junk")
    reply = await stage(ctx, upstream)
    await entries.aclose()
    assert reply.stage == "upstream" and "unreadable" in ctx.trace[0].why
    assert ctx.trace[-1].action == "store"
