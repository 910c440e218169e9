"""Context trimming: plan tables, rule errors, reload, dry run, and e2e through the SDK."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy import tokens
from proxy.auth import Tenant
from proxy.config import ConfigError, parse_rules_doc
from proxy.pipeline.core import Context, Reply
from proxy.pipeline.stages import trim
from proxy.pipeline.summary import DEFAULT_PROMPT, SUMMARY_INTRO, SummaryRules
from proxy.testing import LiveProxy

SYSTEM = {"role": "system", "content": "You are a warm, concise habit coach."}
FILLER = ("I have been working on my running habit and my sleep schedule, and this week "
          "I managed four runs and went to bed before eleven on most nights. ")
RULES = ('pipeline = ["trim"]\n[trim]\nkeep_last = 6\nsummarize_every = 4\n'
         "max_prompt_tokens = 100000\nsummary_max_tokens = 60\n")
PLAN_RULES = trim.TrimRules(keep_last=6, summarize_every=4, max_prompt_tokens=100_000,
                            summary=SummaryRules(max_tokens=16))
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "log_habit", "arguments": '{"habit": "run"}'}}


def conversation(n: int) -> list[dict[str, Any]]:
    """A system prompt and n alternating user/assistant turns (about 40 tokens each)."""
    return [SYSTEM] + [{"role": "user" if i % 2 == 0 else "assistant",
                        "content": f"turn {i}: {FILLER}"} for i in range(n)]


def with_tool_pair(n: int, call_at: int) -> list[dict[str, Any]]:
    """A conversation whose turn `call_at` is a tool call answered at `call_at + 1`."""
    messages = conversation(n)
    messages[1 + call_at] = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    messages[2 + call_at] = {"role": "tool", "tool_call_id": "call_1", "content": "logged"}
    return messages


def turn_numbers(messages: list[dict[str, Any]]) -> list[int]:
    """Which `turn i` messages a list holds (tool messages and summaries left out)."""
    return [int(m["content"].split(":")[0][5:]) for m in messages
            if isinstance(m.get("content"), str) and m["content"].startswith("turn ")]


def summary_requests(live: LiveProxy) -> list[dict[str, Any]]:
    """The summarizer calls the upstream received."""
    return [b for b in live.fake.received if b["messages"][0]["content"] == DEFAULT_PROMPT]


def chat_requests(live: LiveProxy) -> list[dict[str, Any]]:
    """The chat requests (not summaries) the upstream received."""
    return [b for b in live.fake.received if b["messages"][0]["content"] != DEFAULT_PROMPT]


def trim_decision(live: LiveProxy) -> dict[str, Any]:
    """The trim decision of the last chat request, from its ledger row."""
    row = [r for r in live.ledger_rows() if r["source"] == "chat"][-1]
    return next(d for d in json.loads(row["trace"]) if d["stage"] == "trim")


def tool_pairs_intact(messages: list[dict[str, Any]]) -> bool:
    """True when every tool message follows the assistant message that called it."""
    called: set[str] = set()
    for message in messages:
        for call in message.get("tool_calls") or []:
            called.add(call["id"])
        if message["role"] == "tool" and message["tool_call_id"] not in called:
            return False
    return True


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    """A proxy running only the trim stage: keep 6 messages, summarize in blocks of 4."""
    with LiveProxy(tmp_path, rules=RULES) as proxy:
        yield proxy


# --- plan: where the cut falls ----------------------------------------------------------


@pytest.mark.parametrize(("n", "kept_turns"), [
    (6, [0, 1, 2, 3, 4, 5]),
    (7, [4, 5, 6]),
    (9, [4, 5, 6, 7, 8]),
    (10, [4, 5, 6, 7, 8, 9]),
    (11, [8, 9, 10]),
])
def test_cut_falls_on_blocks_of_summarize_every(n: int, kept_turns: list[int]) -> None:
    plan = trim.plan_trim(conversation(n), PLAN_RULES)
    assert turn_numbers(list(plan.tail)) == kept_turns
    assert plan.head == ((SYSTEM,) if plan.cuts else ())
    assert len(plan.summarized) == n - len(kept_turns)


def test_cut_moves_earlier_rather_than_split_a_tool_call_from_its_result() -> None:
    plan = trim.plan_trim(with_tool_pair(7, call_at=3), PLAN_RULES)
    assert plan.tail[0]["tool_calls"] == [CALL] and plan.tail[1]["role"] == "tool"
    assert len(plan.summarized) == 3


def test_token_budget_cuts_further_in_blocks() -> None:
    rules = trim.TrimRules(keep_last=20, summarize_every=2, max_prompt_tokens=300,
                           summary=SummaryRules(max_tokens=16))
    plan = trim.plan_trim(conversation(11), rules)
    assert plan.cuts and len(plan.summarized) % 2 == 0
    assert plan.kept_tokens + 16 + 12 <= 300 < plan.tokens_before


def test_system_messages_in_the_cut_part_are_kept_in_the_head() -> None:
    messages = conversation(9)
    messages.insert(3, {"role": "developer", "content": "Use metric units."})
    plan = trim.plan_trim(messages, PLAN_RULES)
    assert [m["role"] for m in plan.head] == ["system", "developer"]
    assert plan.messages("S")[2] == {"role": "system", "content": SUMMARY_INTRO + "S"}


def test_summary_speaks_as_developer_when_the_app_uses_developer_messages() -> None:
    messages = [{"role": "developer", "content": "Be brief."}, *conversation(9)[1:]]
    plan = trim.plan_trim(messages, PLAN_RULES)
    assert plan.messages("S")[1] == {"role": "developer", "content": SUMMARY_INTRO + "S"}


def test_older_turns_shorter_than_a_summary_are_left_alone() -> None:
    messages = [SYSTEM] + [{"role": "user", "content": "ok"} for _ in range(9)]
    plan = trim.plan_trim(messages, trim.TrimRules(keep_last=6, summarize_every=4))
    assert not plan.cuts and "shorter than a summary" in plan.why


def test_plan_counts_tokens_like_the_request_counter() -> None:
    body = {"model": "gpt-4o", "messages": conversation(5)}
    assert trim.plan_trim(body["messages"], PLAN_RULES).tokens_before == (
        tokens.count_request(body))


@pytest.mark.parametrize(("table", "message"), [
    ("keep_last = 'x'", "rules/config.toml: [trim] keep_last: expected an integer, got 'x'"),
    ("keep_last = 0", "rules/config.toml: [trim] keep_last: must be >= 1, got 0"),
    ("summarize_every = 30",
     "rules/config.toml: [trim] summarize_every: must be <= keep_last (20), got 30"),
    ("max_prompt_tokens = 50", "rules/config.toml: [trim] max_prompt_tokens: must be >= 100"),
    ("summary_model = ''", "rules/config.toml: [trim] summary_model: must name a model"),
    ("summary_max_tokens = 5", "rules/config.toml: [trim] summary_max_tokens: must be >= 16"),
    ("summary_ttl_days = -1", "rules/config.toml: [trim] summary_ttl_days: must be >= 0.0"),
    ("summarize = 1", "rules/config.toml: [trim] summarize: expected true or false, got 1"),
    ("keepLast = 3", "rules/config.toml: [trim] unknown field(s) ['keepLast']"),
])
def test_rule_errors_name_file_table_and_field(table: str, message: str) -> None:
    doc = parse_rules_doc(tomllib.loads(f'pipeline = ["trim"]\n[trim]\n{table}\n'),
                          "rules/config.toml")
    with pytest.raises(ConfigError) as err:
        trim.parse_rules(doc.section("trim"))
    assert str(err.value).startswith(message)


# --- end to end -------------------------------------------------------------------------


def test_short_conversation_is_forwarded_untouched(live: LiveProxy) -> None:
    live.client().chat.completions.create(model="gpt-4o", messages=conversation(5))
    assert live.fake.received[-1]["messages"] == conversation(5)
    assert trim_decision(live)["action"] == "pass"


def test_long_conversation_sends_system_summary_and_recent_turns(live: LiveProxy) -> None:
    completion = live.client().chat.completions.create(model="gpt-4o",
                                                       messages=conversation(7))
    sent = chat_requests(live)[-1]["messages"]
    assert sent[0] == SYSTEM and turn_numbers(sent) == [4, 5, 6]
    assert sent[1]["role"] == "system"
    assert sent[1]["content"].startswith(SUMMARY_INTRO + "[gpt-4o-mini] Here is my answer")
    summarized = summary_requests(live)[0]["messages"][1]["content"]
    assert "turn 3:" in summarized and "turn 4:" not in summarized
    assert completion.choices[0].message.content.startswith("[gpt-4o] Here is my answer to: turn 6")


def test_summary_is_made_once_while_the_conversation_grows_within_a_block(
        live: LiveProxy) -> None:
    client = live.client()
    client.chat.completions.create(model="gpt-4o", messages=conversation(7))
    client.chat.completions.create(model="gpt-4o", messages=conversation(9))
    first, second = chat_requests(live)
    assert len(summary_requests(live)) == 1
    assert first["messages"][1] == second["messages"][1]
    assert trim_decision(live)["summary"] == "stored"


def test_summaries_stored_in_redis_are_reused(tmp_path: Path,
                                              redis_storage: dict[str, Any]) -> None:
    with LiveProxy(tmp_path, rules=RULES, config=redis_storage) as live:
        client = live.client()
        client.chat.completions.create(model="gpt-4o", messages=conversation(7))
        client.chat.completions.create(model="gpt-4o", messages=conversation(9))
        assert len(summary_requests(live)) == 1
        assert trim_decision(live)["summary"] == "stored"


def test_next_block_rolls_the_stored_summary_forward(live: LiveProxy) -> None:
    client = live.client()
    client.chat.completions.create(model="gpt-4o", messages=conversation(7))
    client.chat.completions.create(model="gpt-4o", messages=conversation(11))
    rolled = summary_requests(live)[1]["messages"][1]["content"]
    before, since = rolled.split("Conversation since then:")
    assert before.startswith("Summary so far: [gpt-4o-mini]")
    assert turn_numbers([{"content": line.partition(": ")[2]} for line in since.split("\n")
                         if line]) == [4, 5, 6, 7]


def test_summary_failure_falls_back_to_truncation(live: LiveProxy) -> None:
    live.fake.fail("500", count=3, model="gpt-4o-mini")
    completion = live.client().chat.completions.create(model="gpt-4o",
                                                       messages=conversation(7))
    sent = chat_requests(live)[-1]["messages"]
    assert sent[0] == SYSTEM and turn_numbers(sent) == [4, 5, 6] and len(sent) == 4
    decision = trim_decision(live)
    assert decision["action"] == "truncated" and "failed" in decision["why"]
    assert completion.choices[0].message.content


def test_after_a_failure_the_next_request_makes_the_summary(live: LiveProxy) -> None:
    live.fake.fail("500", count=3, model="gpt-4o-mini")
    client = live.client()
    client.chat.completions.create(model="gpt-4o", messages=conversation(7))
    client.chat.completions.create(model="gpt-4o", messages=conversation(7))
    assert chat_requests(live)[-1]["messages"][1]["content"].startswith(SUMMARY_INTRO)


def test_tool_call_and_result_are_never_separated(live: LiveProxy) -> None:
    live.client().chat.completions.create(model="gpt-4o",
                                          messages=with_tool_pair(7, call_at=3))
    sent = chat_requests(live)[-1]["messages"]
    assert tool_pairs_intact(sent)
    assert sent[2]["tool_calls"][0]["id"] == "call_1" and sent[3]["role"] == "tool"


def test_token_budget_trims_a_short_but_long_winded_conversation(tmp_path: Path) -> None:
    rules = ('pipeline = ["trim"]\n[trim]\nkeep_last = 20\nsummarize_every = 2\n'
             "max_prompt_tokens = 400\nsummary_max_tokens = 50\n")
    with LiveProxy(tmp_path, rules=rules) as live:
        live.client().chat.completions.create(model="gpt-4o", messages=conversation(13))
        sent = chat_requests(live)[-1]
    assert tokens.count_request(sent) <= 400 < tokens.count_request(
        {"model": "gpt-4o", "messages": conversation(13)})


def test_streamed_request_is_trimmed_too(live: LiveProxy) -> None:
    stream = live.client().chat.completions.create(model="gpt-4o", messages=conversation(7),
                                                   stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("[gpt-4o] Here is my answer to: turn 6")
    assert turn_numbers(chat_requests(live)[-1]["messages"]) == [4, 5, 6]


def test_ledger_shows_savings_and_the_summary_call_cost(live: LiveProxy) -> None:
    live.client().chat.completions.create(model="gpt-4o", messages=conversation(7))
    rows = live.ledger_rows()
    chat = next(r for r in rows if r["source"] == "chat")
    summary = next(r for r in rows if r["source"] == "summary")
    assert chat["baseline_usd"] > chat["cost_usd"] > 0
    assert summary["model"] == "gpt-4o-mini" and summary["cost_usd"] > 0
    assert summary["baseline_usd"] == 0 and summary["request_id"] == chat["request_id"]


def test_summaries_are_off_means_plain_truncation(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=RULES + "summarize = false\n") as live:
        live.client().chat.completions.create(model="gpt-4o", messages=conversation(7))
        assert turn_numbers(live.fake.received[-1]["messages"]) == [4, 5, 6]
        assert summary_requests(live) == [] and trim_decision(live)["action"] == "truncated"


def test_dry_run_calls_no_summarizer_but_uses_a_stored_summary(live: LiveProxy) -> None:
    stage = live.pipeline.current.stage("trim")
    tenant = Tenant("alice", "unused", "alice")

    async def explain() -> Context:
        ctx = Context("dry", tenant, {"model": "gpt-4o", "messages": conversation(7)},
                      dry_run=True)

        async def unreachable(ctx: Context) -> Reply:
            return Reply()

        await stage(ctx, unreachable)
        return ctx

    before = live.run(explain())
    assert before.trace[-1].action == "would_summarize" and len(live.fake.received) == 0
    assert before.body["messages"][1]["content"].startswith(SUMMARY_INTRO + "(dry run:")
    live.client().chat.completions.create(model="gpt-4o", messages=conversation(7))
    after = live.run(explain())
    assert (after.trace[-1].action, after.trace[-1].data["summary"]) == ("summarized", "stored")
    assert after.body["messages"][1] == chat_requests(live)[-1]["messages"][1]


def test_tools_and_trim_together_report_one_baseline(tmp_path: Path) -> None:
    rules = RULES.replace('["trim"]', '["tools", "trim"]')
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                             "parameters": {"type": "object"}}}
    original = {"model": "gpt-4o", "messages": conversation(7), "tools": [tool]}
    with LiveProxy(tmp_path, rules=rules) as live:
        live.client().chat.completions.create(**original)
        sent = chat_requests(live)[-1]
        row = [r for r in live.ledger_rows() if r["source"] == "chat"][-1]
        baseline = live.resources.prices.cost("gpt-4o", tokens.count_request(original),
                                             row["completion_tokens"])
    assert "tools" not in sent and turn_numbers(sent["messages"]) == [4, 5, 6]
    assert [d["stage"] for d in json.loads(row["trace"])] == ["tools", "trim"]
    assert row["baseline_usd"] == pytest.approx(baseline)


def test_reload_applies_new_rules_and_refuses_a_broken_edit(live: LiveProxy) -> None:
    client = live.client()

    def sent_turns() -> int:
        client.chat.completions.create(model="gpt-4o", messages=conversation(7))
        return len(turn_numbers(chat_requests(live)[-1]["messages"]))

    assert sent_turns() == 3
    assert live.reload_rules(RULES.replace("keep_last = 6", "keep_last = 20"))
    assert sent_turns() == 7
    assert not live.reload_rules(RULES.replace("summarize_every = 4", "summarize_every = 30"))
    assert "[trim] summarize_every: must be <= keep_last (6), got 30" in str(
        live.pipeline.last_error)
    assert sent_turns() == 7


def test_explain_shows_trim_and_tools_without_any_upstream_call(tmp_path: Path) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                             "parameters": {"type": "object"}}}
    with LiveProxy(tmp_path, rules=RULES.replace('["trim"]', '["tools", "trim"]')) as live:
        report = live.client().post("/proxy/explain", cast_to=object, body={
            "model": "gpt-4o", "messages": conversation(9), "tools": [tool]})
        assert len(live.fake.received) == 0 and live.ledger_rows() == []
    actions = {d["stage"]: d["action"] for d in report["trace"]}
    assert actions["tools"] == "stripped" and actions["trim"] == "would_summarize"
    assert report["messages"] == {"as_sent": 10, "forwarded": 7}
    assert report["tools"] == {"as_sent": 1, "forwarded": 0}
