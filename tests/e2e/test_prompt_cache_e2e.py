"""Upstream prompt caching end to end through the official openai SDK: cached tokens are
read (plain and streamed), priced at the cached rate in the ledger and stats, every
conversation gets a stable `prompt_cache_key`, and trimming keeps each turn's prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.pipeline.prompt_cache import cacheable_tokens
from proxy.pipeline.summary import DEFAULT_PROMPT, SUMMARY_INTRO
from proxy.testing import LiveProxy, admin_get
from proxy.upstream.fake_cache import prompt_token_ids

# About 1,500 tokens: long enough for the upstream to cache from the first turn on.
SYSTEM = {"role": "system", "content": "You are Coach. Keep answers short, warm and specific. "
          * 150}
GPT_4O = (2.50, 1.25, 10.00)  # USD per 1M input, cached input, output tokens


def usd(prompt: int, cached: int, completion: int) -> float:
    """What gpt-4o's list prices charge for these tokens."""
    return ((prompt - cached) * GPT_4O[0] + cached * GPT_4O[1] + completion * GPT_4O[2]) / 1e6


def chat_bodies(live: LiveProxy) -> list[dict[str, Any]]:
    """The chat requests the upstream received (the trim stage's summary calls left out)."""
    return [b for b in live.fake.received if b["messages"][0]["content"] != DEFAULT_PROMPT]


def talk(live: LiveProxy, texts: list[str], **kwargs: Any) -> list[Any]:
    """Send one conversation, turn by turn, as a chat app does; the completions."""
    client, history, answers = live.client(), [SYSTEM], []
    for text in texts:
        history.append({"role": "user", "content": text})
        answer = client.chat.completions.create(model="gpt-4o", messages=history, **kwargs)
        history.append({"role": "assistant", "content": answer.choices[0].message.content})
        answers.append(answer)
    return answers


def test_cached_tokens_are_billed_at_the_cached_rate(live: LiveProxy) -> None:
    first, second = talk(live, ["hi, I'm Raj", "how do I start running?"])
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == cacheable_tokens(len(prompt_token_ids(live.fake.received[0]))) >= 1024
    rows = [r for r in live.ledger_rows() if r["source"] == "chat"]
    assert [r["cached_tokens"] for r in rows] == [0, cached]
    usage = second.usage
    expected = usd(usage.prompt_tokens, cached, usage.completion_tokens)
    assert rows[1]["cost_usd"] == pytest.approx(expected, rel=1e-12)
    assert rows[1]["baseline_usd"] == pytest.approx(expected, rel=1e-12)  # sent as it came
    totals = admin_get(live, "/v1/proxy/stats")[1]["totals"]
    assert totals["cached_tokens"] == cached
    assert totals["cost_usd"] == pytest.approx(
        usd(first.usage.prompt_tokens, 0, first.usage.completion_tokens) + expected, rel=1e-12)


@pytest.mark.parametrize("client_wants_usage", [True, False])
def test_streamed_usage_carries_cached_tokens_to_the_ledger(live: LiveProxy,
                                                             client_wants_usage: bool) -> None:
    talk(live, ["hi, I'm Raj"])
    history = [SYSTEM, {"role": "user", "content": "hi, I'm Raj"},
               {"role": "assistant", "content": "Hi Raj!"}, {"role": "user", "content": "go"}]
    options = {"stream_options": {"include_usage": True}} if client_wants_usage else {}
    chunks = list(live.client().chat.completions.create(model="gpt-4o", messages=history,
                                                        stream=True, **options))
    row = live.ledger_rows()[-1]
    assert row["cached_tokens"] >= 1024
    assert row["cost_usd"] == pytest.approx(
        usd(row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]), rel=1e-12)
    usage = [c.usage for c in chunks if c.usage]
    assert [u.prompt_tokens_details.cached_tokens for u in usage] == (
        [row["cached_tokens"]] if client_wants_usage else [])


def test_each_conversation_gets_its_own_stable_prompt_cache_key(live: LiveProxy) -> None:
    talk(live, ["hi, I'm Raj", "how do I start running?", "and after that?"])
    talk(live, ["hi, I'm Maya"])
    keys = [b["prompt_cache_key"] for b in live.fake.received]
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert keys[0].startswith("pc-")
    live.client("bob").chat.completions.create(model="gpt-4o", messages=[
        SYSTEM, {"role": "user", "content": "hi, I'm Raj"}])
    assert live.fake.received[-1]["prompt_cache_key"] != keys[0]  # another key namespace


def test_the_key_is_all_the_proxy_adds_and_a_clients_own_key_is_kept(live: LiveProxy) -> None:
    body = {"messages": [SYSTEM, {"role": "user", "content": "hi"}], "model": "gpt-4o"}
    live.client().chat.completions.create(**body)
    sent = live.fake.received[-1]
    assert {k: v for k, v in sent.items() if k != "prompt_cache_key"} == body
    assert sent["prompt_cache_key"].startswith("pc-")
    live.client().chat.completions.create(**body, prompt_cache_key="user-42")
    assert live.fake.received[-1]["prompt_cache_key"] == "user-42"


def test_an_upstream_can_be_told_not_to_get_a_key(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, config={"upstream": {"prompt_cache_key": False}}) as live:
        talk(live, ["hi"])
        assert "prompt_cache_key" not in live.fake.received[-1]


def test_the_exact_cache_ignores_the_prompt_cache_key(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules='pipeline = ["exact_cache"]\n') as live:
        messages = [SYSTEM, {"role": "user", "content": "what is a good morning routine?"}]
        live.client().chat.completions.create(model="gpt-4o", messages=messages)
        raw = live.client().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=messages, prompt_cache_key="mine")
        assert raw.headers["x-proxy-cache"] == "hit-exact"
        assert len(live.fake.received) == 1


TOOLS = [{"type": "function", "function": {
    "name": "log_habit", "description": "Record a completed habit (run, walk, meditation).",
    "parameters": {"type": "object", "properties": {"habit": {"type": "string"}}}}},
    {"type": "function", "function": {
        "name": "update_goal", "description": "Change the user's weekly goal.",
        "parameters": {"type": "object", "properties": {"goal": {"type": "string"}}}}}]
TRIM_RULES = ('pipeline = ["tools", "trim"]\n[trim]\nkeep_last = 6\nsummarize_every = 6\n'
              "max_prompt_tokens = 100000\nsummary_max_tokens = 40\n")


def summary_of(body: dict[str, Any]) -> str | None:
    """The summary message a trimmed request carries (None before the first cut)."""
    return next((m["content"] for m in body["messages"]
                 if str(m.get("content", "")).startswith(SUMMARY_INTRO)), None)


def test_successive_turns_send_byte_identical_prefixes_between_summary_moves(
        tmp_path: Path) -> None:
    texts = [f"tell me one more thing about sleep, part {i}" for i in range(10)]
    texts[4] = "I want to log a walk"  # relates to log_habit: another tool set, another prefix
    with LiveProxy(tmp_path, rules=TRIM_RULES) as live:
        answers = talk(live, texts, tools=TOOLS)
        sent = chat_bodies(live)
    cached = [a.usage.prompt_tokens_details.cached_tokens for a in answers]
    assert [[t["function"]["name"] for t in b.get("tools", [])] for b in sent] == [
        [], [], [], [], ["log_habit"], [], [], [], [], []]
    # 2 messages a turn, keep_last 6, cut in blocks of 6: the summary moves every 3 turns
    moves = [i for i in range(1, len(sent)) if summary_of(sent[i]) != summary_of(sent[i - 1])]
    assert moves == [3, 6, 9]
    assert all(b["messages"][0] == SYSTEM for b in sent)
    assert len({b["prompt_cache_key"] for b in sent}) == 1  # named by what the client sent
    for i in range(1, len(sent)):
        same = [j for j in range(i) if j >= max([0, *(m for m in moves if m <= i)])
                and sent[j].get("tools") == sent[i].get("tools")]
        if not same:
            continue  # the summary moved, or a new tool set: the prefix starts over
        before = sent[same[-1]]  # the last request with this summary and these tools
        head = sent[i]["messages"][:len(before["messages"])]
        assert [orjson.dumps(m) for m in head] == [orjson.dumps(m) for m in before["messages"]]
        assert cached[i] == cacheable_tokens(len(prompt_token_ids(before))) >= 1024
    # turn 4 sent another tool set, so nothing was cached; turn 5, back on turn 3's tool
    # set, read turn 3's whole prompt from the cache
    assert cached[4] == 0 and cached[5] == cacheable_tokens(len(prompt_token_ids(sent[3])))
