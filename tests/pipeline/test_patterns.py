"""Pattern replies: matching, conditions, reply choice and bypasses, on the stage itself."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.config import Section, load_rules_doc
from proxy.pipeline.replies import StreamAssembler
from proxy.pipeline.stages.patterns import PatternRules, PatternStage, parse_rules
from proxy.testing import make_context, upstream_stub

ROOT = Path(__file__).resolve().parents[2]
CANNED = ROOT / "tests" / "data" / "canned_messages.txt"
# Questions, follow-ups and statements written by another author (bench/data/README.md):
# none of them should get a canned reply.
OTHERS = ROOT / "bench" / "data" / "heldout_messages.jsonl"


def rules_of(*rules: dict[str, Any]) -> PatternRules:
    return parse_rules(Section({"rules": list(rules)}, "rules.toml", "patterns"))


def stage_of(*rules: dict[str, Any]) -> PatternStage:
    return PatternStage(rules_of(*rules), "UTC", {}, rng=random.Random(1))


def body_for(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], **extra}


async def answer(stage: PatternStage, body: dict[str, Any]) -> str | None:
    """The canned text, or None when the request went on to upstream."""
    reply = await stage(make_context(body), upstream_stub)
    if reply.stage != "pattern":
        return None
    assert reply.body is not None
    return str(orjson.loads(reply.body)["choices"][0]["message"]["content"])


HELLO = {"name": "hello", "phrases": ["hey", "hi"], "replies": ["Hey!"]}
DONE = {"name": "done", "phrases": ["done"], "replies": ["Nice work!"]}


@pytest.mark.parametrize("text", ["hey", "Heyyy!!", "HI 👋", "  hey. "])
async def test_phrases_match_the_normalized_whole_message(text: str) -> None:
    assert await answer(stage_of(HELLO), body_for(text)) == "Hey!"


@pytest.mark.parametrize("text", ["hey, how do I stop snacking", "they", "not done", "done?",
                                  "done with this app"])
async def test_phrases_do_not_match_longer_or_different_messages(text: str) -> None:
    assert await answer(stage_of(HELLO, DONE), body_for(text)) is None


async def test_keyword_sets_need_every_word_in_any_order() -> None:
    stage = stage_of({"name": "run", "keyword_sets": ["finished run"], "replies": ["🏃"],
                      "when": {"max_words": 4}})
    assert await answer(stage, body_for("Run finished!")) == "🏃"
    assert await answer(stage, body_for("finished my book")) is None


async def test_regex_searches_the_normalized_message() -> None:
    stage = stage_of({"name": "x", "regex": "^(?:workout|run) done$", "replies": ["💪"]})
    assert await answer(stage, body_for("Run ✅")) == "💪"
    assert await answer(stage, body_for("Workout: done!!")) == "💪"


async def test_typos_match_only_when_the_rule_allows_them() -> None:
    rule = {"name": "m", "phrases": ["good morning"], "replies": ["Morning!"]}
    assert await answer(stage_of(rule), body_for("good mornign")) is None
    assert await answer(stage_of({**rule, "typos": True}), body_for("good mornign")) == "Morning!"


async def test_first_matching_rule_answers() -> None:
    streak = {"name": "streak", "phrases": ["done"], "replies": ["{streak} days!"],
              "when": {"metadata": {"streak": ">= 7"}}}
    stage = stage_of(streak, DONE)
    assert await answer(stage, body_for("done", metadata={"streak": "9"})) == "9 days!"
    assert await answer(stage, body_for("done", metadata={"streak": "2"})) == "Nice work!"


async def test_max_words_and_conversation_length_conditions() -> None:
    stage = stage_of({"name": "early", "phrases": ["hey"], "replies": ["Welcome!"],
                      "when": {"max_user_messages": 1}})
    assert await answer(stage, body_for("hey")) == "Welcome!"
    later = body_for("hey")
    later["messages"] = [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "Hello"}] + later["messages"]
    assert await answer(stage, later) is None


async def test_time_of_day_uses_the_request_time_zone() -> None:
    rule = {"name": "eve", "phrases": ["hey"], "replies": ["How'd today go?"],
            "when": {"hours": "17-24"}}
    stage = PatternStage(rules_of(rule), "UTC", {},
                         clock=lambda: datetime(2025, 3, 3, 12, tzinfo=UTC))
    assert await answer(stage, body_for("hey")) is None
    tokyo = body_for("hey", metadata={"timezone": "Asia/Tokyo"})
    assert await answer(stage, tokyo) == "How'd today go?"


async def test_placeholders_fill_from_metadata_and_skip_replies_missing_a_value() -> None:
    stage = stage_of({"name": "hi", "phrases": ["hi"], "pick": "rotate",
                      "replies": ["Hi {name}!", "Hi there!"]})
    assert await answer(stage, body_for("hi", metadata={"name": "Ana"})) == "Hi Ana!"
    assert await answer(stage, body_for("hi")) == "Hi there!"


async def test_rule_whose_replies_all_need_missing_metadata_does_not_match() -> None:
    stage = stage_of({"name": "hi", "phrases": ["hi"], "replies": ["Hi {name}!"]})
    assert await answer(stage, body_for("hi")) is None


async def test_rotate_cycles_through_replies() -> None:
    stage = stage_of({"name": "hi", "phrases": ["hi"], "pick": "rotate",
                      "replies": ["a", "b", "c"]})
    assert [await answer(stage, body_for("hi")) for _ in range(4)] == ["a", "b", "c", "a"]


async def test_random_pick_stays_within_the_list() -> None:
    stage = stage_of({"name": "hi", "phrases": ["hi"], "replies": ["a", "b", "c"]})
    picks = {await answer(stage, body_for("hi")) for _ in range(30)}
    assert picks == {"a", "b", "c"}


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"n": 2}, "n > 1"),
        ({"tools": [WEATHER], "tool_choice": "required"}, "forces a tool call"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function",
                                             "function": {"name": "get_weather"}}},
         "forces a tool call"),
        ({"response_format": {"type": "json_object"}}, "structured output"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, "image"),
    ],
)
async def test_requests_that_need_a_model_are_never_answered(extra: dict[str, Any],
                                                             reason: str) -> None:
    ctx = make_context(body_for("hi", **extra))
    reply = await stage_of(HELLO)(ctx, upstream_stub)
    assert reply.stage == "upstream"
    assert reason in ctx.trace[-1].why


async def test_optional_tools_do_not_stop_a_canned_reply() -> None:
    assert await answer(stage_of(HELLO), body_for("hi", tools=[WEATHER])) == "Hey!"


async def test_last_message_not_from_the_user_is_never_answered() -> None:
    body = body_for("hi")
    body["messages"].append({"role": "assistant", "content": "hi"})
    assert await answer(stage_of(HELLO), body) is None


async def test_reply_is_a_free_completion_with_saved_usage() -> None:
    ctx = make_context(body_for("hi"))
    reply = await stage_of(HELLO)(ctx, upstream_stub)
    completion = orjson.loads(reply.body or b"")
    assert completion["object"] == "chat.completion" and completion["model"] == "gpt-4o"
    assert completion["usage"] == {"prompt_tokens": 0, "completion_tokens": 0,
                                   "total_tokens": 0}
    assert reply.usage is None and reply.saved_usage is not None
    assert reply.saved_usage.prompt_tokens > 0 and reply.saved_usage.completion_tokens > 0
    assert ctx.trace[-1].action == "answer" and ctx.trace[-1].data["rule"] == "hello"


async def test_stream_reply_replays_as_chunks_with_usage_when_asked() -> None:
    ctx = make_context(body_for("hi", stream=True, stream_options={"include_usage": True}))
    reply = await stage_of(HELLO)(ctx, upstream_stub)
    assert reply.chunks is not None
    assembler = StreamAssembler()
    assembler.feed_events([chunk async for chunk in reply.chunks])
    assert assembler.done and assembler.completion()["choices"][0]["message"]["content"] == "Hey!"
    assert assembler.usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def test_dry_run_records_the_answer_without_advancing_rotation() -> None:
    stage = stage_of({"name": "hi", "phrases": ["hi"], "pick": "rotate", "replies": ["a", "b"]})
    ctx = make_context(body_for("hi"))
    ctx.dry_run = True
    await stage(ctx, upstream_stub)
    assert ctx.trace[-1].action == "answer"
    assert await answer(stage, body_for("hi")) == "a"


async def test_disabled_rule_is_parsed_but_never_answers() -> None:
    assert await answer(stage_of({**HELLO, "enabled": False}), body_for("hi")) is None


async def test_default_rules_answer_greetings_and_completions_almost_only() -> None:
    doc = load_rules_doc(ROOT / "rules" / "config.toml")
    stage = PatternStage(parse_rules(doc.section("patterns")), "UTC", {})
    canned = [line for line in CANNED.read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    others = [row["text"] for row in map(json.loads, OTHERS.read_text().splitlines())
              if row["context"] != "chat"]
    answered = [t for t in canned if await answer(stage, body_for(t)) is not None]
    wrong = [t for t in others if await answer(stage, body_for(t)) is not None]
    print(f"\ncanned {len(answered)}/{len(canned)}; wrong: {wrong}")
    assert len(others) > 400
    assert len(wrong) <= 2
    assert len(answered) / len(canned) >= 0.9
