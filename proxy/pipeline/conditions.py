"""The `when` table shared by pattern and route rules, and the request facts it tests.

A rule's `when` holds conditions that must all be true:

    [route.rules.when]
    max_words = 12                 # words in the last user message
    max_user_messages = 3          # the message is the conversation's 1st..3rd user turn
    min_tokens = 2000              # prompt tokens of the whole request
    keywords = ["why do i", "goal"]    exclude_keywords = ["not"]
    regex = "^(done|finished)$"    # searched in the normalized last user message
    tools = true   images = false   question = false
    after_question = false         # the assistant's previous message ended with '?'
    response_format = ["json_schema"]  optimize_for = ["cost"]
    hours = "5-12"                 # local time of day, start inclusive, end exclusive
    metadata = { streak = ">= 7", plan = "free" }

Metadata values are strings in OpenAI's API; a comparison is numeric when both
sides parse as numbers.
"""

from __future__ import annotations

import hashlib
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from proxy.config import ConfigError, Section
from proxy.pipeline.facts import OPTIMIZE_FOR, RequestFacts
from proxy.pipeline.text import keyword_pattern

T = TypeVar("T")

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, "!=": operator.ne, "==": operator.eq,
    ">": operator.gt, "<": operator.lt,
}
_COMPARISON = re.compile(r"^\s*(>=|<=|!=|==|>|<)?\s*(.*?)\s*$", re.DOTALL)
_HOURS = re.compile(r"^\s*(\d{1,2})\s*-\s*(\d{1,2})\s*$")
_WHEN_FIELDS = {"min_words", "max_words", "min_user_messages", "max_user_messages",
                "min_messages", "max_messages", "min_tokens", "max_tokens", "keywords",
                "exclude_keywords", "regex", "tools", "images", "question", "after_question",
                "response_format", "optimize_for", "hours", "metadata"}


class NestedSection(Section):
    """A sub-table whose errors stay located at the rule: `[route.rules.2] when.max_tokens`."""

    prefix: str

    def __init__(self, parent: Section, key: str) -> None:
        outer = parent.prefix + "." if isinstance(parent, NestedSection) else ""
        table = parent.table.get(key, {})
        if not isinstance(table, Mapping):
            raise parent.error(f"expected a table, got {type(table).__name__}", key)
        super().__init__(table, parent.file, parent.where)
        self.prefix = outer + key

    def error(self, problem: str, key: str | None = None) -> ConfigError:
        """A ConfigError naming the field as `prefix.key`."""
        return super().error(problem, f"{self.prefix}.{key}" if key else self.prefix)


def parse_timezone(section: Section, key: str, default: str | None) -> str | None:
    """An IANA time zone name, checked to exist."""
    name = section.str(key, default)
    if name is not None:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise section.error(f"unknown time zone {name!r} (use an IANA name such as "
                                "'Europe/Berlin')", key) from None
    return name


MODES = ("act", "shadow", "split")


@dataclass(frozen=True, slots=True)
class RuleMode:
    """How a rule that holds takes effect: `act`; `shadow` (evaluated and recorded, never
    acting, so a new rule is measured on live traffic first); or `split` (acts for
    `percent`% of requests, chosen by a stable hash of the request id, shadow for the rest:
    an A/B test)."""

    kind: str = "act"
    percent: float = 100.0

    def acts(self, request_id: str, rule: str) -> bool:
        """True when the rule takes effect for this request."""
        if self.kind != "split":
            return self.kind == "act"
        digest = hashlib.blake2b(f"{rule}:{request_id}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % 10_000 < self.percent * 100


def parse_mode(section: Section) -> RuleMode:
    """A rule's `mode` ("act", "shadow", "split") and, for split, `percent` (0-100)."""
    kind = section.choice("mode", MODES, "act")
    percent = section.float("percent", 100.0 if kind == "act" else 0.0, minimum=0.0)
    if percent > 100.0:
        raise section.error(f"must be between 0 and 100, got {percent}", "percent")
    if kind == "split" and "percent" not in section.table:
        raise section.error("mode = \"split\" needs percent (0-100): the share of "
                            "requests the rule acts on", "percent")
    if kind != "split" and "percent" in section.table:
        raise section.error(f"percent only applies to mode = \"split\", not {kind!r}",
                            "percent")
    return RuleMode(kind, percent)


def parse_named_rules(section: Section, parse_one: Callable[[Section], T | None]) -> list[T]:
    """Parse `[[<stage>.rules]]` whose `name`s must be unique; disabled rules (None) drop out."""
    rules: list[T] = []
    names: set[str | None] = set()
    for rule_section in section.subs("rules"):
        rule = parse_one(rule_section)
        name = rule_section.str("name")
        if name in names:
            raise rule_section.error(f"another rule is already called {name!r}", "name")
        names.add(name)
        if rule is not None:
            rules.append(rule)
    return rules


def parse_regex(section: Section, key: str) -> re.Pattern[str] | None:
    """A compiled regular expression field."""
    source = section.str(key)
    if source is None:
        return None
    try:
        return re.compile(source)
    except re.error as exc:
        raise section.error(f"invalid regular expression: {exc}", key) from None


@dataclass(frozen=True, slots=True)
class MetadataTest:
    """`metadata.KEY OP VALUE`; numeric when both sides are numbers."""

    key: str
    op: str
    value: str

    def holds(self, metadata: Mapping[str, Any]) -> bool:
        """True when the request's metadata satisfies the comparison."""
        if self.key not in metadata:
            return False
        actual, expected = str(metadata[self.key]), self.value
        left, right = _number(actual), _number(expected)
        if left is not None and right is not None:
            return _COMPARISONS[self.op](left, right)
        if self.op in ("==", "!="):
            return _COMPARISONS[self.op](actual, expected)
        return False


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _parse_metadata(section: NestedSection) -> tuple[MetadataTest, ...]:
    tests = []
    for key, raw in section.table.items():
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise section.error(f"expected a comparison such as '>= 7' or a value, got {raw!r}",
                                key)
        match = _COMPARISON.match(str(raw))
        assert match is not None
        op, value = match.group(1) or "==", match.group(2)
        if not value:
            raise section.error(f"missing the value to compare with in {raw!r}", key)
        if op not in ("==", "!=") and _number(value) is None:
            raise section.error(f"{op} needs a number, got {value!r}", key)
        tests.append(MetadataTest(str(key), op, value))
    return tuple(tests)


def _parse_hours(section: Section, key: str) -> tuple[int, int] | None:
    raw = section.str(key)
    if raw is None:
        return None
    match = _HOURS.match(raw)
    if not match or not all(0 <= int(h) <= 24 for h in match.groups()):
        raise section.error(f"expected 'START-END' in whole hours 0-24, got {raw!r}", key)
    start, end = int(match.group(1)), int(match.group(2))
    if start == end:
        raise section.error(f"start and end are equal in {raw!r}", key)
    return start, end


@dataclass(frozen=True, slots=True)
class Conditions:
    """Parsed `when` conditions of one rule; all must hold."""

    min_words: int | None = None
    max_words: int | None = None
    min_user_messages: int | None = None
    max_user_messages: int | None = None
    min_messages: int | None = None
    max_messages: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    keywords: re.Pattern[str] | None = None
    exclude_keywords: re.Pattern[str] | None = None
    regex: re.Pattern[str] | None = None
    tools: bool | None = None
    images: bool | None = None
    question: bool | None = None
    after_question: bool | None = None
    response_format: tuple[str, ...] | None = None
    optimize_for: tuple[str, ...] | None = None
    hours: tuple[int, int] | None = None
    metadata: tuple[MetadataTest, ...] = ()

    @property
    def needs_tokens(self) -> bool:
        """True when testing these conditions needs the prompt's token count."""
        return self.min_tokens is not None or self.max_tokens is not None

    def holds(self, facts: RequestFacts) -> bool:
        """True when every condition holds for the request (facts are computed lazily)."""
        for low, high, fact in ((self.min_words, self.max_words, "word_count"),
                                (self.min_user_messages, self.max_user_messages, "user_messages"),
                                (self.min_messages, self.max_messages, "message_count"),
                                (self.min_tokens, self.max_tokens, "prompt_tokens")):
            if low is None and high is None:
                continue
            value = getattr(facts, fact)
            if (low is not None and value < low) or (high is not None and value > high):
                return False
        for flag, fact in ((self.tools, "has_tools"), (self.images, "has_images"),
                           (self.question, "is_question"),
                           (self.after_question, "after_question")):
            if flag is not None and getattr(facts, fact) is not flag:
                return False
        text = facts.text.text if (self.keywords or self.exclude_keywords or self.regex) else ""
        return not (
            (self.keywords is not None and not self.keywords.search(text))
            or (self.exclude_keywords is not None and self.exclude_keywords.search(text))
            or (self.regex is not None and not self.regex.search(text))
            or (self.response_format is not None
                and facts.response_format not in self.response_format)
            or (self.optimize_for is not None and facts.optimize_for not in self.optimize_for)
            or (self.hours is not None and not _in_hours(facts.local_hour, self.hours))
            or not all(test.holds(facts.metadata) for test in self.metadata)
        )


def _in_hours(hour: int, span: tuple[int, int]) -> bool:
    start, end = span
    return start <= hour < end if start < end else hour >= start or hour < end


def parse_conditions(rule: Section, *, question: bool | None = None) -> Conditions:
    """Read a rule's `when` table (`question` is the default for that condition)."""
    when = NestedSection(rule, "when")
    when.reject_unknown(_WHEN_FIELDS)
    counts = {name: when.int(name, None, minimum=0) for name in (
        "min_words", "max_words", "min_user_messages", "max_user_messages",
        "min_messages", "max_messages", "min_tokens", "max_tokens")}
    for low, high in (("min_words", "max_words"), ("min_user_messages", "max_user_messages"),
                      ("min_messages", "max_messages"), ("min_tokens", "max_tokens")):
        least, most = counts[low], counts[high]
        if least is not None and most is not None and least > most:
            raise when.error(f"is below {low} ({least}), so the rule never applies", high)
    fmt = when.strs("response_format")
    opt = when.strs("optimize_for")
    if opt is not None and not set(opt) <= set(OPTIMIZE_FOR):
        raise when.error(f"expected values from {list(OPTIMIZE_FOR)}, got {list(opt)}",
                         "optimize_for")
    return Conditions(
        **counts,
        keywords=keyword_pattern(when.strs("keywords", ())),
        exclude_keywords=keyword_pattern(when.strs("exclude_keywords", ())),
        regex=parse_regex(when, "regex"),
        tools=when.bool("tools"),
        images=when.bool("images"),
        question=when.bool("question", question),
        after_question=when.bool("after_question"),
        response_format=fmt,
        optimize_for=opt,
        hours=_parse_hours(when, "hours"),
        metadata=_parse_metadata(NestedSection(when, "metadata")),
    )
