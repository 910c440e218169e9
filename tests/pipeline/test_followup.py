"""Which messages stand on their own (semantic cache may answer) and which depend on context."""

from __future__ import annotations

import pytest

from proxy.pipeline.semantic.followup import context_dependence, is_question

STANDALONE = [
    "how do I descale a kettle?",
    "what's the difference between a roth and a traditional ira",
    "is it safe to swim after eating?",
    "how long does it take to learn to juggle",
    "tips for sleeping on a plane",
    "as a beginner, how often should I go climbing?",
    "how do I stop procrastinating when a task feels too big for me to start it",
    "what are foods that help with digestion",
    "oh and how do I clean suede shoes?",
    "Yes! What is a good stretch for tight hamstrings?",
    "perfect. how do I build a morning routine?",
]
DEPENDENT = [
    ("yes", "short reply"),
    ("sounds good", "short reply"),
    ("yes, do it", "short reply"),  # accepting an offer: "do it" alone is a question start
    ("sure, log that please", "short reply"),
    ("no, I meant the other one", "continues the conversation"),
    ("what about the weekend?", "continues the conversation"),
    ("and for someone over 60?", "continues the conversation"),
    ("ok but what if it rains", "continues the conversation"),
    ("can you give me another example", "asks to rework the previous answer"),
    ("could you make it shorter please", "asks to rework the previous answer"),
    ("why did that happen", "points back at something said before"),
    ("how do I get better at it", "points back at something said before"),
    ("which one is cheaper", "points back at something said before"),
    ("is this normal for a beginner", "points back at something said before"),
    ("why does thsi keep happening", "points back at something said before"),
    ("what should I cook tomorrow", "refers to the conversation's past or the user's schedule"),
    ("same thing as last time?", "continues the conversation"),
    ("you said to rest, for how long", "refers to the conversation's past or the user's schedule"),
    ("how many pages have i read", "asks about the user's own history"),
    ("why do i keep forgetting to practice", "asks about the user's own history"),
    ("what do you think my weak spot is", "asks about the user's own history"),
    ("do you notice anything about my mornings", "asks about the user's own history"),
    ("i finished the whole book today", "refers to the conversation's past or the user's schedule"),
    ("i feel a bit off", "a personal statement"),
    ("pretty tired overall", "a statement, not a question"),
    ("where should i begin?", "names no subject"),
]


@pytest.mark.parametrize("text", STANDALONE)
def test_standalone_questions_are_not_flagged(text: str) -> None:
    assert context_dependence(text) is None


@pytest.mark.parametrize(("text", "reason"), DEPENDENT)
def test_context_dependent_messages_are_flagged_with_the_reason(text: str, reason: str) -> None:
    assert context_dependence(text) == reason


@pytest.mark.parametrize(("text", "expected"), [
    ("how do I knit", True), ("explain inflation", True), ("knitting, any tips", True),
    ("the weather is nice", False), ("inflation?", True),
])
def test_is_question(text: str, expected: bool) -> None:
    assert is_question(text) is expected
