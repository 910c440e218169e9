"""Context-safe reuse and shadow rules, end to end through the official openai SDK.

An answer is served to another conversation only when the message stands alone
(the learned classifier); a follow-up or a question about the user's own state
gets a fresh answer in every conversation, from both caches. A rule in shadow
mode changes nothing and shows up in `/v1/proxy/routing/metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.testing import LiveProxy, admin_get

RULES = """
pipeline = ["exact_cache", "semantic_cache", "route"]
[semantic_cache]
threshold = 0.80
"""
SYSTEM = {"role": "system", "content": "You are a friendly habit coach."}


def conversation(user: str, earlier: str, text: str) -> dict:
    """A request from `user` whose last message `text` follows up on `earlier`."""
    return {"model": "gpt-4o", "metadata": {"user_id": user},
            "messages": [SYSTEM, {"role": "user", "content": earlier},
                         {"role": "assistant", "content": "Here is a three-step plan."},
                         {"role": "user", "content": text}]}


def single(user: str, text: str) -> dict:
    """A one-message request from `user`."""
    return {"model": "gpt-4o", "metadata": {"user_id": user},
            "messages": [SYSTEM, {"role": "user", "content": text}]}


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    with LiveProxy(tmp_path, rules=RULES) as proxy:
        yield proxy


def ask(live: LiveProxy, body: dict) -> str:
    """Send `body`; the stage that answered."""
    raw = live.client().chat.completions.with_raw_response.create(**body)
    return raw.headers["x-proxy-stage"]


@pytest.mark.parametrize("text", ["ok so what's step two?", "can u say that more simply?",
                                  "be honest, am i actually making progress"])
def test_a_message_that_needs_its_conversation_is_answered_fresh_in_each(
        live: LiveProxy, text: str) -> None:
    first = ask(live, conversation("u1", "help me build a morning routine", text))
    second = ask(live, conversation("u2", "how do i get into running", text))
    again_single = [ask(live, single(u, text)) for u in ("u3", "u4")]
    assert (first, second) == ("upstream", "upstream")
    assert again_single == ["upstream", "upstream"]
    assert sum(1 for r in live.fake.received if r["messages"][-1]["content"] == text) == 4


def test_the_same_user_repeating_a_follow_up_may_get_their_own_stored_answer(
        live: LiveProxy) -> None:
    body = conversation("u1", "help me build a morning routine", "ok so what's step two?")
    assert ask(live, body) == "upstream"
    assert ask(live, body) == "exact_cache"  # the same user, the same conversation
    assert ask(live, {**body, "metadata": {"user_id": "u2"}}) == "upstream"


def test_a_standalone_question_asked_by_two_users_goes_upstream_once(live: LiveProxy) -> None:
    text = "How much protein should I eat per day to build muscle?"
    assert ask(live, single("u1", text)) == "upstream"
    assert ask(live, single("u2", text)) == "exact_cache"
    reworded = "how much protein do i need daily to build muscle"
    assert ask(live, single("u3", reworded)) == "semantic_cache"
    assert sum(1 for r in live.fake.received if "protein" in r["messages"][-1]["content"]) == 1


def test_a_question_about_the_user_is_never_served_across_users(live: LiveProxy) -> None:
    for user in ("u1", "u2", "u3"):
        assert ask(live, single(user, "can we adjust my goals?")) == "upstream"
    explain = live.client().post("/proxy/explain", cast_to=object,
                                 body=single("u4", "can we adjust my goals?"))
    semantic = next(d for d in explain["trace"] if d["stage"] == "semantic_cache")
    assert semantic["action"] == "skip" and "not standalone" in semantic["why"]


SHADOW_RULES = """
pipeline = ["patterns", "route"]
[[patterns.rules]]
name = "hello-shadow"
mode = "shadow"
phrases = ["hi", "hello"]
replies = ["Hey!"]

[route]
aliases = { auto = "gpt-4o-mini" }
[[route.rules]]
name = "try-strong"
model = "gpt-4o"
mode = "shadow"
when = { max_words = 30 }
"""


def test_shadow_rules_change_nothing_but_are_measured(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=SHADOW_RULES) as live:
        client = live.client()
        for text in ("hi", "hello", "what is a good stretch for tight hips?"):
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": text}])
            assert raw.headers["x-proxy-stage"] == "upstream"
            assert raw.headers["x-proxy-model"] == "gpt-4o-mini"
        assert [r["model"] for r in live.fake.received] == ["gpt-4o-mini"] * 3
        assert len(live.ledger_rows()) == 3  # (flushes the ledger)
        status, metrics = admin_get(live, "/v1/proxy/routing/metrics")
    assert status == 200
    shadow = metrics["shadow"]
    assert shadow["patterns:hello-shadow"]["would_have_held"] == 2
    assert shadow["patterns:hello-shadow"]["would_cost_usd"] == 0.0
    assert shadow["patterns:hello-shadow"]["would_save_usd"] > 0
    strong = shadow["route:try-strong"]
    assert strong["would_have_held"] == 3
    assert strong["would_models"] == {"gpt-4o": 3}
    assert strong["would_cost_usd"] > strong["cost_usd"] > 0  # gpt-4o costs more
    assert metrics["by_rule"]["default"]["calls"] == 3
