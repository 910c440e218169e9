"""Cheap local checks that two similar-looking questions really ask the same thing.

Embedding similarity alone confuses questions that share most of their words but
differ in the one that matters: a number, a negation, an opposite, whose routine,
which time of day, which language or food. `pair_conflict` compares the two texts
word class by word class and names the first difference found (None: no conflict).
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import TypeVar

from proxy.pipeline.wordlists import (
    ANTONYM_AXES,
    ENTITY_FAMILIES,
    FIRST_PERSON,
    LOOSE_TIME_FRAMES,
    MAGNITUDE_AXES,
    NEGATIONS,
    NUMBER_WORDS,
    QUESTION_FOCUS,
    SECOND_PERSON,
    SLANG,
    TIME_FRAMES,
)

T = TypeVar("T")
_TOKEN = re.compile(r"c\+\+|c#|f#|\d+(?:[.,]\d+)*[a-z]*|[a-z][a-z0-9]*(?:'[a-z]+)?")
_LEADING_FILLER = re.compile(
    r"^(?:(?:hey|hi|hello|yo|so|ok|okay|um+|uh+|hm+|well|btw|oh|also|"
    r"(?:quick|silly|random|dumb|stupid) question(?: but)?|question|real quick|"
    r"just (?:curious|wondering)|wondering|i was wondering)\b[\s,:;.!-]*)+")
_TRAILING_FILLER = re.compile(
    r"(?:[\s,.!-]*\b(?:thanks|thank you|thx|ty|tysm|lol|lmao|haha|hehe|pls|please|"
    r"asking for a friend|btw|just curious))+[\s.!?]*$")
# "can you explain X" asks the assistant to act; it says nothing about whose X.
_REQUEST_FORM = re.compile(
    r"\b(?:can|could|would|will) (?:you|u) (?:please )?(?:explain|tell|show|give|help|suggest|"
    r"recommend|describe|list|share|walk|teach)\b")
_QUANTITY_QUESTION = re.compile(r"\bhow (?:many|much|long|often|far|big|old)\b")
# Function words; a one-letter typo of one ("wht", "doees") is read as the word.
_FUNCTION_WORDS = frozenset(
    "a an the and or but if of to in on at by for with from into onto about as than then "
    "so is are was were be been being am do does did doing done have has had having can "
    "could should would will shall may might must what whats which whose there here it "
    "its this that these those theres some any all each every much many very really just "
    "also too quite still even ever".split())
# Words too generic to tell two questions apart.
_GENERIC_WORDS = frozenset(
    "get gets got getting make makes making made take takes taking go goes going "
    "per enough fine out often times number amount thing things tip tips idea ideas kind "
    "sort lot lots bit something someone anything explain tell show give know mean means "
    "help need want like look looks work works typical typically usually actually possible "
    "ok okay".split())


@dataclass(frozen=True, slots=True)
class TextFeatures:
    """The word classes of one text that the guards compare."""

    numbers: frozenset[str]
    negated: bool
    poles: frozenset[tuple[str, int]]
    persons: tuple[int, ...]
    times: frozenset[str]
    entities: frozenset[tuple[str, str]]
    focus: frozenset[str]
    content: frozenset[str]  # as written; compared by lemma, prefix and typo distance


def clean_text(text: str) -> str:
    """Lower-case, drop emoji and chat fillers ("quick question", "thanks lol")."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[^\w\s'#+?!.,:;/%$-]", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = _LEADING_FILLER.sub("", text)
    text = _TRAILING_FILLER.sub("", text)
    return re.sub(r"([?!.,])\1+", r"\1", text).strip(" ,;:-")


def tokens(text: str) -> list[str]:
    """Word tokens: "don't" -> "dont", "15,000" -> "15000", "Spain's" -> "spain", "u" -> "you"."""
    out = []
    for tok in _TOKEN.findall(text.lower()):
        if tok[0].isdigit():
            tok = tok.replace(",", "")
        tok = tok.removesuffix("'s").replace("'", "")
        out.append(SLANG.get(tok, tok))
    return out


def lemma(word: str) -> str:
    """A crude stem: plural, -ing, -ed and -ly endings removed."""
    if re.search(r"(?:s|x|z|ch|sh)es$", word):
        return word[:-2]
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("ly", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: len(word) - len(suffix)] + keep
            if suffix in ("ing", "ed") and stem[-1] == stem[-2] and stem[-1] not in "ls":
                stem = stem[:-1]  # running -> run, hitting -> hit
            return stem
    return word


def _poles() -> dict[str, tuple[str, int]]:
    table: dict[str, tuple[str, int]] = {}
    for axis, (plus, minus) in ANTONYM_AXES.items():
        table.update(dict.fromkeys(plus.split(), (axis, 1)))
        table.update(dict.fromkeys(minus.split(), (axis, -1)))
    return table


_POLE_OF = _poles()
_GUARDED = (frozenset(_POLE_OF) | NEGATIONS | FIRST_PERSON | SECOND_PERSON
            | frozenset(TIME_FRAMES) | frozenset(NUMBER_WORDS) | frozenset(QUESTION_FOCUS))


def _lookup(table: dict[str, T], word: str) -> T | None:
    """The entry for `word` or for its lemma ("slows" -> "slow")."""
    return table.get(word) or table.get(lemma(word))


@functools.lru_cache(maxsize=8192)
def features(text: str) -> TextFeatures:
    """Extract the compared word classes from a (raw or cleaned) text."""
    cleaned = clean_text(text)
    words = tokens(_REQUEST_FORM.sub(" ", cleaned))
    numbers = {re.sub(r"[a-z]+$", "", w) or w for w in words if w[0].isdigit()}
    numbers |= {NUMBER_WORDS[w] for w in words if w in NUMBER_WORDS}
    persons = tuple(1 if w in FIRST_PERSON else 2 for w in words
                    if w in FIRST_PERSON or w in SECOND_PERSON)
    entities = {(family, _compound(words, i)) for i, w in enumerate(words)
                for family, names in ENTITY_FAMILIES.items() if w in names}
    content = {w for w in words
               if w not in _GUARDED and lemma(w) not in _GUARDED and not w[0].isdigit()
               and len(w) > 2 and not _is_stopword(w)}
    return TextFeatures(
        numbers=frozenset(numbers),
        negated=any(w in NEGATIONS for w in words),
        poles=frozenset(pole for w in words if (pole := _lookup(_POLE_OF, w))),
        persons=tuple(dict.fromkeys(persons)),
        times=frozenset(frame for w in words if (frame := _lookup(TIME_FRAMES, w))),
        entities=frozenset(entities),
        focus=frozenset(QUESTION_FOCUS[w] for w in tokens(_QUANTITY_QUESTION.sub(" ", cleaned))
                        if w in QUESTION_FOCUS),
        content=frozenset(content),
    )


@functools.lru_cache(maxsize=8192)
def _is_stopword(word: str) -> bool:
    """A function or generic word, or a one-letter typo of a function word ("wht", "doees")."""
    if word in _FUNCTION_WORDS or word in _GENERIC_WORDS or lemma(word) in _GENERIC_WORDS:
        return True
    return len(word) <= 6 and any(
        abs(len(word) - len(stop)) <= 1 and len(stop) >= 3
        and difflib.SequenceMatcher(None, word, stop).ratio() >= 0.8 for stop in _FUNCTION_WORDS)


def _compound(words: list[str], i: int) -> str:
    """A named thing with the content word before it: "goblet squat" is not "squat"."""
    before = words[i - 1] if i else ""
    if before and before not in _GUARDED and not before[0].isdigit() and len(before) > 2 \
            and not _is_stopword(before):
        return f"{before} {words[i]}"
    return words[i]


def _close(word: str, others: frozenset[str]) -> bool:
    """True when `others` holds `word`, its lemma, a longer form of it or a typo of it."""
    if word in others:
        return True
    stem = lemma(word)
    for other in others:
        other_stem = lemma(other)
        if other_stem == stem or min(len(stem), len(other_stem)) >= 3 and (
                other.startswith(stem) or word.startswith(other_stem)):
            return True
        short, long_ = sorted((word, other), key=len)
        if len(short) >= 4 and long_.startswith(short):
            return True
        if min(len(word), len(other)) >= 4 and \
                difflib.SequenceMatcher(None, word, other).ratio() >= 0.8:
            return True
    return False


def unmatched(a: frozenset[str], b: frozenset[str]) -> tuple[set[str], set[str]]:
    """Content words of each side with no equal, prefix or typo-near word on the other."""
    return ({w for w in a if not _close(w, b)}, {w for w in b if not _close(w, a)})


def _conflicting_poles(a: frozenset[tuple[str, int]], b: frozenset[tuple[str, int]]) -> str | None:
    """Opposite poles on a shared axis ("raise" / "lower"), or a change of size, speed,
    depth... on one side only or on different axes ("recover faster" / "take longer")."""
    axes_a, axes_b = {x for x, _ in a}, {x for x, _ in b}
    for axis in sorted(axes_a & axes_b):
        pa = {p for x, p in a if x == axis}
        pb = {p for x, p in b if x == axis}
        if not (pa <= pb or pb <= pa):
            return f"opposite {axis}"
    if axes_a & MAGNITUDE_AXES != axes_b & MAGNITUDE_AXES:
        return "direction differs"
    return None


def _time_conflict(a: frozenset[str], b: frozenset[str]) -> bool:
    strict = (a ^ b) - LOOSE_TIME_FRAMES
    loose_a, loose_b = a & LOOSE_TIME_FRAMES, b & LOOSE_TIME_FRAMES
    return bool(strict) or bool(loose_a and loose_b and loose_a != loose_b)


def pair_conflict(a: str, b: str) -> str | None:
    """Why `a` and `b` ask different things by their guarded word classes, or None.

    Content words are left to `content_gap`, which may be bridged by synonyms.
    """
    fa, fb = features(a), features(b)
    if fa.numbers != fb.numbers:
        return "numbers differ"
    if fa.negated != fb.negated:
        return "negation differs"
    opposite = _conflicting_poles(fa.poles, fb.poles)
    if opposite:
        return opposite
    if fa.persons and fb.persons and fa.persons != fb.persons:
        return "pronoun perspective differs"
    if _time_conflict(fa.times, fb.times):
        return "time frame differs"
    if fa.entities != fb.entities:
        return "named things differ"
    if fa.focus and fb.focus and not fa.focus & fb.focus:
        return "asks for something else"
    return None


def content_gap(a: str, b: str) -> tuple[set[str], set[str]]:
    """Content words each side has and the other lacks, when BOTH sides have some
    (a word swapped for another); an added word alone narrows rather than changes."""
    only_a, only_b = unmatched(features(a).content, features(b).content)
    return (only_a, only_b) if only_a and only_b else (set(), set())
