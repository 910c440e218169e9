"""Decide whether a chat message can be answered without its conversation.

The semantic cache may only serve a message whose answer is the same for anyone
who sends it. `context_dependence` names why a message is not such a standalone
question (a follow-up that points back, a question about the user's own
history, a short reply, a statement), or returns None for a standalone one.
Wrongly calling a message standalone serves someone else's answer, so the rules
lean towards "dependent"; missing a standalone question only costs a cache hit.
"""

from __future__ import annotations

import difflib
import re

import numpy as np

from proxy.pipeline.semantic.paraphrase import clean_text, features, tokens

_QUESTION_STARTS = frozenset(
    "what whats how hows why when where who whos which is are can could should would will "
    "do does any tips tip give explain tell suggest recommend show list describe define "
    "compare difference best ways".split())
# "what about tomorrow?", "what if I'm busy", "same for weekends?", "... then?"
_CONTINUES = re.compile(
    r"^(?:so what|same|even|what about|how about|what if|why not|instead|otherwise)\b"
    r"|\b(?:then|too|instead|as well)$")
# "and ...", "but ...", "yes, ..." join on to the last turn (answer it); what follows
# must stand on its own: "yes, do it" is the short reply "do it".
_CONNECTOR = re.compile(
    r"^(?:(?:and|but|also|or|plus|so|ok|okay|oh|yes|yeah|yep|yup|sure|no|nope|nah|alright|"
    r"right|please|great|cool|fine|perfect|sounds good)\b[\s,.!]*)+")
# Asking to rework the previous answer: "can you be more specific", "give me an example".
_REWORK = re.compile(
    r"\b(?:more specific|an example|another example|more detail|in more detail|simpler|"
    r"shorter|elaborate|explain more|say more|tell me more|go on|continue|rephrase|"
    r"break it down|step by step|into steps)\b")
# Pronouns that point at something said before.
_POINTERS = frozenset("this these those them they their theirs he she him her his hers".split())
_POINTER_SPELLINGS = ("that", "this", "those", "these")
_NOT_POINTERS = frozenset("than then thin the they them there their tho thai tips".split())
# The rules' key words, recognised through one-letter typos ("tihnk", "kwep", "spexific").
_KEYWORDS = ("think", "keep", "specific", "example", "more", "again", "always", "usually",
             "tomorrow", "yesterday", "progress")
_POINTING_ONE = re.compile(
    r"\b(?:the|that|this|which|first|second|third|last|other|next|previous|another) one\b")
# "that" after these words points back ("explain that", "why did that happen", "is that
# normal"); after a noun it starts a relative clause ("foods that help sleep").
_THAT_POINTS_AFTER = frozenset(
    "is was does did do with about around on of for like explain try tried mean than into "
    "from make made break why how what when where at to by if in do doing think".split())
# "it" as an empty subject ("is it safe to", "how long does it take") points at nothing.
_EMPTY_IT = re.compile(
    r"\b(?:is|was|isnt|would|will|does|do|did) (?:it|its) (?:\w+ )?(?:ok|okay|safe|good|bad|"
    r"better|worse|best|possible|normal|fine|healthy|unhealthy|true|worth|necessary|smart|"
    r"wise|realistic|important|hard|easy|too|a|take|matter|help|hurt|count|make)\b"
    r"|\b(?:its|it is) (?:ok|okay|safe|good|bad|better|possible|normal|fine|true|worth|hard|"
    r"easy|too)\b|\bit takes?\b|\btake it easy\b")
# References to the user's own record or to this conversation's past.
_HISTORY = re.compile(
    r"\b(?:again|anymore|so far|lately|last time|as before|same as|since we|we talked|"
    r"we discussed|we made|we agreed|you said|you suggested|you told|you mentioned|"
    r"you recommended|you gave|last check|in my place|my progress|my week|"
    r"my month|my streak|my history|my stats|my data|my mood|my approach|my completion|"
    r"my numbers|my results|my trends?|my patterns?|whats on|the plan|our plan|my plan|"
    r"today|tonight|tomorrow|yesterday|this (?:week|morning|evening|month)|next week)\b")
# Questions about the user themself: only their coach, with their history, can answer.
_ABOUT_ME = re.compile(
    r"\b(?:am i|did i|have i|was i|were i|i keep (?!going)\w+ing|i always|i usually|do i usually|"
    r"do i always|why am i|why cant i|wrong with me|what am i|for me$|about me|with me|"
    r"is it me|you think|do you notice|do you see|what would you do|lets|let us|how am i|"
    r"where am i|what do you know|help me (?:plan|set|turn|make|figure|decide|choose|pick)|"
    r"should i \w+ my (?:\w+ )?(?:goal|goals|target|plan|streak|schedule)|"
    r"^do i \w+ (?:more|less|better|worse|enough|too much|too little))\b")
_FIRST_PERSON = frozenset("i im ive id ill me my mine myself".split())
MIN_WORDS = 3


def is_question(text: str) -> bool:
    """True for a question or a request ("tips for ...", "as a beginner, how ...")."""
    if "?" in text:
        return True
    for clause in re.split(r"[,.;:!]", text):
        words = tokens(clause)
        if words and words[0] in _QUESTION_STARTS:
            return True
    return False


def context_dependence(text: str) -> str | None:
    """Why `text` cannot be answered on its own, or None when it can."""
    cleaned = clean_text(text)
    joined = _CONNECTOR.match(cleaned)
    cleaned = cleaned[joined.end():] if joined else cleaned
    words = [_spelled(w) for w in tokens(cleaned)]
    plain = " ".join(words)
    if len(words) < MIN_WORDS:
        return "short reply"
    if joined and words[0] not in _QUESTION_STARTS:
        return "continues the conversation"
    if _CONTINUES.search(plain):
        return "continues the conversation"
    if _REWORK.search(plain):
        return "asks to rework the previous answer"
    if _HISTORY.search(plain):
        return "refers to the conversation's past or the user's schedule"
    if _ABOUT_ME.search(plain):
        return "asks about the user's own history"
    if _POINTING_ONE.search(plain) or _POINTERS.intersection(words) or _points_back(words):
        return "points back at something said before"
    if not is_question(cleaned):
        return ("a personal statement" if _FIRST_PERSON.intersection(words)
                else "a statement, not a question")
    if not features(cleaned).content:
        return "names no subject"
    return None


def _points_back(words: list[str]) -> bool:
    """A "that"/"it" (or a misspelt "this"/"that") referring outside the message."""
    plain = " ".join(words)
    empty_it = _EMPTY_IT.sub(" ", plain).split()
    seen_subject = False
    for i, word in enumerate(words):
        if word in ("that", "thats") and (
                i == 0 or i == len(words) - 1 or words[i - 1] in _THAT_POINTS_AFTER):
            return True
        if _misspelt_pointer(word):
            return True
        if word in ("it", "its") and not seen_subject and word in empty_it:
            return True
        seen_subject = seen_subject or bool(features(word).content)
    return False


def _near(word: str, target: str) -> bool:
    return word[0] == target[0] and difflib.SequenceMatcher(None, word, target).ratio() >= 0.75


def _misspelt_pointer(word: str) -> bool:
    return (word not in _NOT_POINTERS and word not in _POINTER_SPELLINGS and 3 <= len(word) <= 5
            and any(_near(word, p) for p in _POINTER_SPELLINGS))


def _spelled(word: str) -> str:
    """`word`, or the rule keyword it misspells."""
    if len(word) >= 4 and word not in _KEYWORDS:
        return next((k for k in _KEYWORDS if _near(word, k)), word)
    return word


SIGNALS = ("short", "joined", "continues", "rework", "history", "about_me", "points_back",
           "question", "first_person", "no_subject", "question_mark", "long")


def signals(text: str) -> np.ndarray:
    """The rules above as evidence for a learned classifier: one 0/1 feature per check
    (in `SIGNALS` order), each computed on its own rather than first-match-wins."""
    cleaned = clean_text(text)
    joined = _CONNECTOR.match(cleaned)
    rest = cleaned[joined.end():] if joined else cleaned
    words = [_spelled(w) for w in tokens(rest)]
    plain = " ".join(words)
    return np.array([
        len(words) < MIN_WORDS,
        bool(joined) and bool(words) and words[0] not in _QUESTION_STARTS,
        bool(_CONTINUES.search(plain)),
        bool(_REWORK.search(plain)),
        bool(_HISTORY.search(plain)),
        bool(_ABOUT_ME.search(plain)),
        bool(_POINTING_ONE.search(plain) or _POINTERS.intersection(words)
             or (words and _points_back(words))),
        is_question(rest),
        bool(_FIRST_PERSON.intersection(words)),
        not features(rest).content,
        "?" in text,
        len(words) > 25,
    ], dtype=np.float32)
