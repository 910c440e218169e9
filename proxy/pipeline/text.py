"""Chat-message text as rules see it: the last user message, normalized for matching.

Normalization makes "Heyyy!!", "hey 👋" and "HEY." read alike: NFKC, lower case,
apostrophes dropped ("didn't" -> "didnt"), every other non-letter/digit
(punctuation, emoji) becomes a space. A message with check marks ("Run ✅") also
has a variant reading them as the word "done" ("run done"). Two forms are
kept: `text` squeezes letters repeated three or more times ("heyyy" -> "hey") for
regexes; `squeezed` squeezes every repeat ("hello", "helllo" -> "helo") so that
word lists normalized the same way match elongated spellings. A message made only
of emoji is kept as its emoji ("👍👍" -> "👍").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_APOSTROPHES = re.compile(r"['’`]")
_CHECK_MARKS = re.compile("[\u2705\u2714\u2611]")
_NOT_WORD = re.compile(r"[^\w]|_", re.UNICODE)
_ELONGATED = re.compile(r"([^\W\d_])\1{2,}")
_REPEATED = re.compile(r"(.)\1+")
_SPACES = re.compile(r"\s+")
RULE_TEXT_CHARS = 16_384
"""Rules read at most this many characters of a message: its keywords further on go
unseen, and nothing scans megabytes of text on the event loop."""
MAX_ANALYZED_CHARS = 2_000
"""A longer message is no greeting, short reply or standalone question: the word-by-word
analyses (canned replies, follow-up detection, paraphrase checks) skip it unread."""


def content_text(content: Any) -> str:
    """The text of a message's content (string or content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content
                        if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The text of the last message when it is a user message, else None."""
    if not messages or messages[-1].get("role") != "user":
        return None
    return content_text(messages[-1].get("content"))


def _emoji_only(raw: str) -> str:
    symbols = [ch for ch in raw if unicodedata.category(ch) == "So"]
    return _REPEATED.sub(r"\1", "".join(symbols))


@dataclass(frozen=True, slots=True)
class NormalizedText:
    """One message in the forms rules match against."""

    text: str
    squeezed: str
    is_question: bool

    @property
    def words(self) -> list[str]:
        """The words of `text`."""
        return self.text.split()


def normalize(raw: str, *, check_marks_as_done: bool = False) -> NormalizedText:
    """Normalize a message (or a rule's phrase) for matching."""
    folded = _APOSTROPHES.sub("", unicodedata.normalize("NFKC", raw).lower())
    if check_marks_as_done:
        folded = _CHECK_MARKS.sub(" done ", folded)
    text = _SPACES.sub(" ", _NOT_WORD.sub(" ", folded)).strip()
    text = _ELONGATED.sub(r"\1", text)
    squeezed = _REPEATED.sub(r"\1", text) if text else _emoji_only(folded)
    return NormalizedText(text=text, squeezed=squeezed, is_question="?" in raw)


def readings(raw: str) -> tuple[NormalizedText, ...]:
    """The normalized message, plus its check-marks-as-"done" variant when it has any."""
    plain = normalize(raw)
    if not _CHECK_MARKS.search(raw):
        return (plain,)
    return plain, normalize(raw, check_marks_as_done=True)


def one_typo_apart(typed: str, word: str) -> bool:
    """True for one substitution, insertion, deletion or swap of neighbours, in words of
    five or more letters whose first letter is right ("mornign" ~ "morning")."""
    if typed == word or min(len(typed), len(word)) < 5 or typed[0] != word[0]:
        return typed == word
    if abs(len(typed) - len(word)) > 1:
        return False
    i = next((k for k, (a, b) in enumerate(zip(typed, word)) if a != b), min(len(typed),
                                                                              len(word)))
    if len(typed) == len(word):
        return typed[i + 1:] == word[i + 1:] or (
            typed[i:i + 2] == word[i:i + 2][::-1] and typed[i + 2:] == word[i + 2:])
    longer, shorter = (typed, word) if len(typed) > len(word) else (word, typed)
    return longer[i + 1:] == shorter[i:]


def keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str] | None:
    """A regex finding any keyword phrase as whole words, allowing plural/-ed/-ing/-er
    endings ("goal" finds "goals", "plan" finds "planning" but not "plank" or "planted")."""
    alternatives = []
    for keyword in keywords:
        words = normalize(keyword).text.split()
        if words:
            last = re.escape(words[-1][-1])
            endings = f"(?:s|es|d|ed|ing|er|ers|{last}ed|{last}ing|{last}er|{last}ers)?"
            alternatives.append(r"\s+".join(re.escape(w) for w in words) + endings)
    if not alternatives:
        return None
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b")
