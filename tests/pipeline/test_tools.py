"""Tool-definition stripping: unit tables, rule errors, reload, and e2e through the SDK."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, parse_rules_doc
from proxy.pipeline.stages import tools
from proxy.testing import LiveProxy


def function_tool(name: str, description: str, **props: str) -> dict[str, Any]:
    """A `tools` item for a function with string parameters."""
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "required": list(props),
                       "properties": {k: {"type": "string", "description": v}
                                      for k, v in props.items()}}}}


LOG_HABIT = function_tool(
    "log_habit", "Record that the user completed one of their habits today (a workout, "
    "meditation, reading, drinking water) so streaks and weekly reports stay accurate.",
    habit="Which habit was completed, as named in the user's plan", notes="Free-form notes",
    duration="How long it took, e.g. '30 minutes'")
UPDATE_GOAL = function_tool(
    "update_goal", "Create or change the user's goal: the target, the deadline and the weekly "
    "plan that leads there. Use when the user wants to set, raise or lower a goal.",
    target="What the user wants to achieve", deadline="ISO date", plan="Weekly plan in prose")
GET_WEATHER = function_tool(
    "get_weather", "Weather forecast for a city, to plan outdoor runs and walks.",
    city="City name, e.g. 'Paris'")
COACH_TOOLS = [LOG_HABIT, UPDATE_GOAL, GET_WEATHER]
SYSTEM = {"role": "system", "content": "You are a warm, concise habit coach."}
RULES = 'pipeline = ["tools"]\n[tools]\n'


def ask(text: str) -> list[dict[str, Any]]:
    """A system prompt and one user message."""
    return [SYSTEM, {"role": "user", "content": text}]


def names(body: dict[str, Any]) -> list[str]:
    """Names of the tools an upstream body carried."""
    return [t["function"]["name"] for t in body.get("tools") or []]


def last_decision(live: LiveProxy, stage: str = "tools") -> dict[str, Any]:
    """The stage's decision in the last chat request's ledger trace."""
    row = [r for r in live.ledger_rows() if r["source"] == "chat"][-1]
    return next(d for d in json.loads(row["trace"]) if d["stage"] == stage)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    """A proxy running only the tools stage with default rules."""
    with LiveProxy(tmp_path, rules=RULES) as proxy:
        yield proxy


# --- unit tables ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("get_weather", ["get", "weather"]),
    ("getWeather", ["get", "weather"]),
    ("Log a 30-minute run!", ["log", "a", "minute", "run"]),
])
def test_split_words_splits_names_and_sentences(text: str, expected: list[str]) -> None:
    assert tools.split_words(text) == expected


@pytest.mark.parametrize(("words", "same_stem"), [
    (["log", "logs", "logged", "logging"], True),
    (["note", "notes"], True),
    (["run", "running"], True),
    (["goal", "goals"], True),
    (["boss", "bosses"], True),
    (["weather", "water"], False),
])
def test_stem_folds_inflections(words: list[str], same_stem: bool) -> None:
    assert (len({tools.stem(w) for w in words}) == 1) is same_stem


@pytest.mark.parametrize(("text", "kept"), [
    ("I feel so tired today", []),
    ("hey coach!", []),
    ("what's the weather in Paris tomorrow?", ["get_weather"]),
    ("I finished my meditation", ["log_habit"]),
    ("I want to raise my goal to 10k", ["update_goal"]),
    ("logged my workout, what is the forecast?", ["log_habit", "get_weather"]),
    ("Can you get me some water", ["log_habit"]),  # 'water' is in log_habit's description
])
def test_related_tools_by_keywords(text: str, kept: list[str]) -> None:
    stripper = tools.ToolStripper(tools.ToolRules())
    wanted = tools.content_stems(text)
    assert [tools.tool_name(t) for t in COACH_TOOLS if stripper.related(t, False, wanted)] == kept


OFFER = {"role": "assistant", "content": "Great week! Want me to update your goal to 10k steps?"}


@pytest.mark.parametrize(("messages", "kept"), [
    ([SYSTEM, OFFER, {"role": "user", "content": "yes, do it"}], ["update_goal"]),
    ([SYSTEM, OFFER, {"role": "user", "content": "sure go ahead with that"}], ["update_goal"]),
    ([SYSTEM, OFFER, {"role": "user", "content": [{"type": "text", "text": "ok!"}]}],
     ["update_goal"]),
    # a message that says something of its own is judged on its own words
    ([SYSTEM, OFFER, {"role": "user", "content": "What should I eat before bed?"}], []),
    ([SYSTEM, OFFER, {"role": "user", "content": "I finished my meditation"}], ["log_habit"]),
    # only the closing question counts, not the whole answer before it
    ([SYSTEM, {"role": "assistant", "content": "Log your workouts daily. Streaks matter."},
      {"role": "user", "content": "ok"}], []),
    ([SYSTEM, {"role": "assistant", "content": "Log your workouts daily. Shall I raise the "
               "goal?"}, {"role": "user", "content": "ok"}], ["update_goal"]),
    # the tools the assistant called count as what it talked about
    ([SYSTEM, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c", "content": "sunny"},
      {"role": "assistant", "content": "Sunny all day."},
      {"role": "user", "content": "and tomorrow?"}], []),
    ([SYSTEM, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
      {"role": "user", "content": "again please"}], ["get_weather"]),
    ([SYSTEM, {"role": "user", "content": "yes"}], []),
])
def test_a_reply_to_the_assistant_borrows_its_keywords(messages: list[dict[str, Any]],
                                                       kept: list[str]) -> None:
    stripper = tools.ToolStripper(tools.ToolRules())
    wanted = tools.content_stems(tools.request_text(messages))
    assert [tools.tool_name(t) for t in COACH_TOOLS if stripper.related(t, False, wanted)] == kept


CALL = {"id": "call_1", "type": "function", "function": {"name": "log_habit", "arguments": "{}"}}
CALL2 = {**CALL, "id": "call_2"}


@pytest.mark.parametrize(("messages", "is_open"), [
    ([{"role": "user", "content": "hi"}], False),
    ([{"role": "assistant", "tool_calls": [CALL]}], True),
    ([{"role": "assistant", "tool_calls": [CALL]},
      {"role": "tool", "tool_call_id": "call_1", "content": "ok"}], False),
    ([{"role": "assistant", "tool_calls": [CALL, CALL2]},
      {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
      {"role": "user", "content": "and?"}], True),
    ([{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}], True),
    ([{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
      {"role": "function", "name": "f", "content": "ok"}], False),
])
def test_open_tool_call_detection(messages: list[dict[str, Any]], is_open: bool) -> None:
    assert tools.open_tool_call(messages) is is_open


@pytest.mark.parametrize(("table", "message"), [
    ("[tools]\nmode = 'some'",
     "rules/config.toml: [tools] mode: expected one of ['per_tool', 'all_or_none'], got 'some'"),
    ("[tools]\nenabled = 'yes'",
     "rules/config.toml: [tools] enabled: expected true or false, got 'yes'"),
    ("[tools]\nkeep_for_models = 4",
     "rules/config.toml: [tools] keep_for_models: expected a list of strings, got 4"),
    ("[tools]\nstrip = true",
     "rules/config.toml: [tools] unknown field(s) ['strip']"),
    ("[tools.keywords]\nlog_habit = [1]",
     "rules/config.toml: [tools.keywords] log_habit: expected a list of strings, got [1]"),
    ("[tools.keywords]\nlog_habit = ['!!']",
     "rules/config.toml: [tools.keywords] log_habit: expected at least one word"),
    ("tools = 3", "rules/config.toml: [tools] expected a table, got int"),
])
def test_rule_errors_name_file_table_and_field(table: str, message: str) -> None:
    doc = parse_rules_doc(tomllib.loads('pipeline = ["tools"]\n' + table), "rules/config.toml")
    with pytest.raises(ConfigError) as err:
        tools.parse_rules(doc.section("tools"))
    assert str(err.value).startswith(message)


def test_default_rule_file_parses() -> None:
    doc = parse_rules_doc(tomllib.loads(Path("rules/config.toml").read_text()),
                          "rules/config.toml")
    assert "tools" in doc.pipeline
    assert tools.parse_rules(doc.section("tools")) == tools.parse_rules(
        parse_rules_doc({}, "x").section("tools"))


# --- end to end -------------------------------------------------------------------------


def test_unrelated_message_sends_no_tools_upstream(live: LiveProxy) -> None:
    completion = live.client().chat.completions.create(
        model="gpt-4o", messages=ask("I feel so tired today"), tools=COACH_TOOLS,
        tool_choice="auto", parallel_tool_calls=True)
    sent = live.fake.received[-1]
    assert "tools" not in sent and "tool_choice" not in sent
    assert "parallel_tool_calls" not in sent
    assert completion.choices[0].message.content.startswith("[gpt-4o] Here is my answer")
    decision = last_decision(live)
    assert decision["action"] == "stripped" and decision["dropped"] == 3
    assert decision["tokens_saved"] == tools.tokens.count_tools(COACH_TOOLS)


def test_related_message_keeps_only_related_tools_and_the_call_works(live: LiveProxy) -> None:
    completion = live.client().chat.completions.create(
        model="gpt-4o", messages=ask("get weather in Paris"), tools=COACH_TOOLS)
    assert names(live.fake.received[-1]) == ["get_weather"]
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert last_decision(live)["action"] == "narrowed"


def test_accepting_an_offer_keeps_the_offered_tool(live: LiveProxy) -> None:
    live.client().chat.completions.create(
        model="gpt-4o", messages=[SYSTEM, OFFER, {"role": "user", "content": "yes, do it"}],
        tools=COACH_TOOLS)
    assert names(live.fake.received[-1]) == ["update_goal"]
    decision = last_decision(live)
    assert decision["action"] == "narrowed" and decision["dropped_tools"] == [
        "log_habit", "get_weather"]


def test_all_or_none_mode_keeps_every_tool_when_one_relates(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=RULES + 'mode = "all_or_none"\n') as live:
        live.client().chat.completions.create(
            model="gpt-4o", messages=ask("what's the weather like?"), tools=COACH_TOOLS)
        assert names(live.fake.received[-1]) == ["log_habit", "update_goal", "get_weather"]


def test_extra_keywords_from_rules_relate_a_tool(tmp_path: Path) -> None:
    rules = RULES + '[tools.keywords]\nlog_habit = ["ran", "gym"]\n'
    with LiveProxy(tmp_path, rules=rules) as live:
        live.client().chat.completions.create(
            model="gpt-4o", messages=ask("I ran 5k this morning"), tools=COACH_TOOLS)
        assert names(live.fake.received[-1]) == ["log_habit"]


@pytest.mark.parametrize("tool_choice", [
    "required", {"type": "function", "function": {"name": "log_habit"}}])
def test_forced_tool_choice_keeps_all_tools(live: LiveProxy, tool_choice: Any) -> None:
    completion = live.client().chat.completions.create(
        model="gpt-4o", messages=ask("I feel so tired today"), tools=COACH_TOOLS,
        tool_choice=tool_choice)
    sent = live.fake.received[-1]
    assert names(sent) == ["log_habit", "update_goal", "get_weather"]
    assert sent["tool_choice"] == tool_choice
    assert completion.choices[0].message.tool_calls[0].function.name == "log_habit"


def test_tool_choice_none_strips_tools_and_the_choice(live: LiveProxy) -> None:
    live.client().chat.completions.create(
        model="gpt-4o", messages=ask("what's the weather in Paris?"), tools=COACH_TOOLS,
        tool_choice="none")
    sent = live.fake.received[-1]
    assert "tools" not in sent and "tool_choice" not in sent


def test_open_tool_call_in_history_keeps_tools(live: LiveProxy) -> None:
    messages = [SYSTEM, {"role": "user", "content": "log my run and my reading"},
                {"role": "assistant", "content": None, "tool_calls": [CALL, CALL2]},
                {"role": "tool", "tool_call_id": "call_1", "content": "logged run"},
                {"role": "user", "content": "thanks, feeling tired"}]
    live.client().chat.completions.create(model="gpt-4o", messages=messages, tools=COACH_TOOLS)
    assert len(names(live.fake.received[-1])) == 3
    assert "still waits for its result" in last_decision(live)["why"]


def test_tool_result_as_last_message_keeps_tools_for_chained_calls(live: LiveProxy) -> None:
    client = live.client()
    messages: list[Any] = ask("get weather in Paris")
    first = client.chat.completions.create(model="gpt-4o", messages=messages, tools=COACH_TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    second = client.chat.completions.create(model="gpt-4o", messages=messages, tools=COACH_TOOLS)
    assert len(names(live.fake.received[-1])) == 3
    assert "sunny, 21C" in second.choices[0].message.content


def test_models_listed_in_keep_for_models_keep_their_tools(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=RULES + 'keep_for_models = ["gpt-4.1*"]\n') as live:
        client = live.client()
        client.chat.completions.create(model="gpt-4.1-mini", messages=ask("so tired"),
                                       tools=COACH_TOOLS)
        assert len(names(live.fake.received[-1])) == 3
        client.chat.completions.create(model="gpt-4o", messages=ask("so tired"),
                                       tools=COACH_TOOLS)
        assert "tools" not in live.fake.received[-1]


def test_legacy_functions_are_stripped_with_function_call(live: LiveProxy) -> None:
    functions = [t["function"] for t in COACH_TOOLS]
    live.client().chat.completions.create(
        model="gpt-4o", messages=ask("I feel so tired today"), functions=functions,
        function_call="auto")
    sent = live.fake.received[-1]
    assert "functions" not in sent and "function_call" not in sent


def test_streamed_request_is_stripped_too(live: LiveProxy) -> None:
    stream = live.client().chat.completions.create(
        model="gpt-4o", messages=ask("I feel so tired today"), tools=COACH_TOOLS, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("[gpt-4o] Here is my answer") and "tools" not in live.fake.received[-1]


def test_request_without_tools_is_forwarded_untouched(live: LiveProxy) -> None:
    live.client().chat.completions.create(model="gpt-4o", messages=ask("hello"), seed=3,
                                          prompt_cache_key="mine")
    assert live.fake.received[-1] == {"model": "gpt-4o", "messages": ask("hello"), "seed": 3,
                                      "prompt_cache_key": "mine"}


def test_ledger_baseline_exceeds_cost_when_tools_are_stripped(live: LiveProxy) -> None:
    live.client().chat.completions.create(
        model="gpt-4o", messages=ask("I feel so tired today"), tools=COACH_TOOLS)
    row = live.ledger_rows()[-1]
    assert row["baseline_usd"] > row["cost_usd"] > 0


def test_reload_applies_new_rules_and_refuses_a_broken_edit(live: LiveProxy) -> None:
    client = live.client()

    def sent_tools() -> int:
        client.chat.completions.create(model="gpt-4o", messages=ask("so tired"),
                                       tools=COACH_TOOLS)
        return len(names(live.fake.received[-1]))

    assert sent_tools() == 0
    assert live.reload_rules(RULES + "enabled = false\n")
    assert sent_tools() == 3
    assert not live.reload_rules(RULES + "mode = 'sometimes'\n")
    assert "[tools] mode: expected one of" in str(live.pipeline.last_error)
    assert str(live.rules_path) in str(live.pipeline.last_error)
    assert sent_tools() == 3
