"""Message normalization and keyword matching used by pattern and route rules."""

from __future__ import annotations

import pytest

from proxy.pipeline.text import keyword_pattern, last_user_text, normalize, one_typo_apart, readings


@pytest.mark.parametrize(
    ("raw", "text", "squeezed"),
    [
        ("Heyyy!!", "hey", "hey"),
        ("Thanks!! 🙏", "thanks", "thanks"),
        ("HELLO.", "hello", "helo"),
        ("helllo", "helo", "helo"),
        ("Good morning 😊👋", "good morning", "god morning"),
        ("I didn't", "i didnt", "i didnt"),
        ("gym session: done 👍", "gym session done", "gym sesion done"),
        ("👍👍", "", "👍"),
        ("👍🏽", "", "👍"),
    ],
)
def test_normalize_reads_variants_alike(raw: str, text: str, squeezed: str) -> None:
    normalized = normalize(raw)
    assert (normalized.text, normalized.squeezed) == (text, squeezed)


@pytest.mark.parametrize(("raw", "question"), [("done?", True), ("done", False),
                                                ("hows it going 🤔?", True)])
def test_normalize_notes_questions(raw: str, question: bool) -> None:
    assert normalize(raw).is_question is question


def test_check_marks_add_a_done_reading() -> None:
    assert [r.text for r in readings("Run ✅")] == ["run", "run done"]
    assert [r.text for r in readings("Run")] == ["run"]


@pytest.mark.parametrize(
    ("typed", "word", "near"),
    [("mornign", "morning", True), ("thnaks", "thanks", True), ("eveing", "evening", True),
     ("coavh", "coach", True), ("mornings", "morning", True),
     ("nite", "nice", False), ("water", "later", False), ("morni", "morning", False),
     ("gopd", "good", False)],
)
def test_one_typo_apart_only_in_long_words_with_the_right_first_letter(
        typed: str, word: str, near: bool) -> None:
    assert one_typo_apart(typed, word) is near


@pytest.mark.parametrize(
    ("text", "found"),
    [("my plans for june", True), ("planning my week", True), ("planner", True),
     ("goals", True), ("Why   do I skip?", True), ("a plank a day", False),
     ("i planted tomatoes", False), ("a planet", False)],
)
def test_keywords_match_whole_words_with_common_endings(text: str, found: bool) -> None:
    pattern = keyword_pattern(["plan", "goal", "why do i"])
    assert pattern is not None
    assert bool(pattern.search(normalize(text).text)) is found


def test_last_user_text_is_none_when_the_last_message_is_not_the_users() -> None:
    user = {"role": "user", "content": [{"type": "text", "text": "hi"},
                                        {"type": "image_url", "image_url": {"url": "x"}}]}
    assert last_user_text([user]) == "hi"
    assert last_user_text([user, {"role": "assistant", "content": "hello"}]) is None
