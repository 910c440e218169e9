"""The semantic cache's word-class guards, on general cases (not the dev set's sentences)."""

from __future__ import annotations

import pytest

from proxy.pipeline.semantic.paraphrase import clean_text, content_gap, features, pair_conflict


@pytest.mark.parametrize(("a", "b", "reason"), [
    ("how many grams of fat are in 3 avocados", "how many grams of fat are in 5 avocados",
     "numbers differ"),
    ("is a 20 minute walk enough", "is a twenty minute walk enough", None),
    ("is 1,500 meters a long swim", "is 1500 meters a long swim", None),
    ("can dogs eat grapes", "can't dogs eat grapes", "negation differs"),
    ("how do I bake bread with yeast", "how do I bake bread without yeast", "negation differs"),
    ("how do I never miss a deadline", "how do I miss a deadline", "negation differs"),
    ("how do I raise my credit score", "how do I lower my credit score", "opposite amount"),
    ("how can I type faster", "how can I type slower", "opposite speed"),
    ("what is the warmest month in Oslo", "what is the coldest month in Oslo",
     "opposite temperature"),
    ("how do I make my essays longer", "how do I make my essays shorter", "opposite length"),
    ("how do I start a journaling habit", "how do I quit a journaling habit", "opposite onset"),
    ("how can I finish chores faster", "how can I make chores take longer", "direction differs"),
    ("how do I cook rice", "how do I cook rice faster", "direction differs"),
    ("what is my favourite colour", "what is your favourite colour",
     "pronoun perspective differs"),
    ("can you explain compound interest", "explain compound interest", None),
    ("what should I cook for lunch", "what should I cook for dinner", "time frame differs"),
    ("give me a weekly budgeting plan", "give me a monthly budgeting plan", "time frame differs"),
    ("should I stretch before yoga", "should I stretch after yoga", "time frame differs"),
    ("how do I sort a dict in kotlin", "how do I sort a dict in ruby", "named things differ"),
    ("what is the population of norway", "what is the population of peru",
     "named things differ"),
    ("how much iron is in spinach", "how much iron is in tofu", "named things differ"),
    ("tips for a better deadlift", "tips for a better romanian deadlift", "named things differ"),
    ("when should I water tomatoes", "how should I water tomatoes", "asks for something else"),
    ("how do I water tomatoes", "what's the best way to water tomatoes", None),
])
def test_pair_conflict_names_the_difference(a: str, b: str, reason: str | None) -> None:
    assert pair_conflict(a, b) == reason


@pytest.mark.parametrize(("a", "b", "gap"), [
    ("who painted the mona lisa", "who painted the night watch",
     ({"lisa", "mona"}, {"watch"})),
    ("how do I clean a cast iron pan", "how do I clean a cast iron skillet",
     ({"pan"}, {"skillet"})),
    ("tips for learning guitar", "tips for learning guitar as an adult", (set(), set())),
    ("how do I fix a leaking tap", "how do i fix a leakng tap", (set(), set())),
])
def test_content_gap_is_the_words_swapped_on_both_sides(a: str, b: str,
                                                        gap: tuple[set[str], set[str]]) -> None:
    assert content_gap(a, b) == gap


@pytest.mark.parametrize(("raw", "cleaned"), [
    ("Quick question: how do I boil an egg? thanks!! 🙏", "how do i boil an egg?"),
    ("hey, so what is a roth ira lol", "what is a roth ira"),
    ("How do I boil an egg??? asking for a friend", "how do i boil an egg?"),
])
def test_clean_text_drops_chat_fillers(raw: str, cleaned: str) -> None:
    assert clean_text(raw) == cleaned


def test_features_read_chat_spellings() -> None:
    assert features("should u stretch b4 a run").times == features("stretch before a run").times
    assert features("should u stretch b4 a run").persons == (2,)
