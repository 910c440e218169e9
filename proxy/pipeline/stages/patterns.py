"""Pattern replies: canned answers to "hi", "thanks", "done" without calling upstream.

Rules are tried in order against the last user message; the first that matches
answers with a genuine `chat.completion` (or its SSE chunks) at zero usage:

    [[patterns.rules]]
    name = "thanks"
    enabled = true
    phrases = ["thanks", "thank you", "thx"]     # the whole message, normalized
    typos = true                                 # phrases also match with one typo
    keyword_sets = ["finished workout"]          # all these words appear, any order
    regex = '^(?:thanks|thx)(?: a lot)?$'        # searched in the normalized message
    replies = ["Anytime, {name}!", "You got it 💪"]   # {key} = metadata value
    pick = "rotate"                              # or "random"
    when = { max_words = 4 }                     # conditions: see pipeline/conditions.py

A reply whose placeholders are missing from the request's metadata is not used;
a rule with no usable reply does not match. Requests that need a real model
(forced tool calls, n > 1, structured output, logprobs, an image in the message)
are never answered.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy import tokens
from proxy.config import Section
from proxy.kept import KeptKey
from proxy.pipeline.conditions import (
    Conditions,
    RuleMode,
    parse_conditions,
    parse_mode,
    parse_named_rules,
    parse_regex,
    parse_timezone,
)
from proxy.pipeline.core import Context, Next, Reply, Usage
from proxy.pipeline.facts import Clock, RequestFacts, utc_now
from proxy.pipeline.replies import free_reply, make_completion
from proxy.pipeline.text import MAX_ANALYZED_CHARS, NormalizedText, normalize, one_typo_apart
from proxy.resources import Resources

REPLY_STAGE = "pattern"
ROTATION: KeptKey[dict[str, int]] = KeptKey("patterns")  # rotate picks, per rule
PICKS = ("random", "rotate")
_RULE_FIELDS = {"name", "enabled", "phrases", "typos", "keyword_sets", "regex", "replies",
                "pick", "when", "mode", "percent"}


@dataclass(frozen=True, slots=True)
class CannedReply:
    """One reply text and the metadata keys its placeholders need."""

    text: str
    needs: frozenset[str]

    def render(self, metadata: Mapping[str, Any]) -> str | None:
        """The text with placeholders filled, or None when a value is missing."""
        values = {k: str(metadata[k]) for k in self.needs if str(metadata.get(k) or "")}
        if len(values) < len(self.needs):
            return None
        return self.text.format_map(values)


@dataclass(frozen=True, slots=True)
class PatternRule:
    """A matcher (phrases / keyword sets / regex), its conditions and its replies."""

    name: str
    phrases: frozenset[str]
    phrase_words: Mapping[int, tuple[tuple[str, ...], ...]]
    typos: bool
    keyword_sets: tuple[frozenset[str], ...]
    regex: re.Pattern[str] | None
    replies: tuple[CannedReply, ...]
    pick: str
    when: Conditions
    mode: RuleMode = RuleMode()

    def matches_text(self, facts: RequestFacts) -> bool:
        """True when the message is one of the phrases, has a keyword set, or fits the regex."""
        return any(self._matches(text) for text in facts.readings)

    def _matches(self, text: NormalizedText) -> bool:
        if text.squeezed in self.phrases or (self.typos and self._near_phrase(text.words)):
            return True
        if self.keyword_sets:
            words = set(text.squeezed.split())
            if any(keywords <= words for keywords in self.keyword_sets):
                return True
        return self.regex is not None and bool(self.regex.search(text.text))

    def _near_phrase(self, words: list[str]) -> bool:
        for phrase in self.phrase_words.get(len(words), ()):
            differing = [(w, p) for w, p in zip(words, phrase, strict=True) if w != p]
            if len(differing) == 1 and one_typo_apart(*differing[0]):
                return True
        return False


@dataclass(frozen=True, slots=True)
class PatternRules:
    """The enabled pattern rules, in order, and the default time zone."""

    rules: tuple[PatternRule, ...] = ()
    timezone: str | None = None


def _parse_reply(section: Section, index: int, text: str) -> CannedReply:
    where = f"replies[{index}]"
    needs = set()
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise section.error(f"{exc} in {text!r} (write {{{{ and }}}} for literal braces)",
                            where) from None
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise section.error(f"placeholder {{{name}{'!' + conversion if conversion else ''}"
                                f"{':' + spec if spec else ''}}} must be a plain metadata key "
                                "such as {name}", where)
        needs.add(name)
    return CannedReply(text, frozenset(needs))


def _normalized_phrases(section: Section, key: str) -> list[NormalizedText]:
    phrases = []
    for phrase in section.strs(key, ()):
        normalized = normalize(phrase)
        if not normalized.squeezed:
            raise section.error(f"{phrase!r} is empty once normalized", key)
        phrases.append(normalized)
    return phrases


def _by_word_count(phrases: list[NormalizedText]) -> dict[int, tuple[tuple[str, ...], ...]]:
    grouped: dict[int, list[tuple[str, ...]]] = {}
    for phrase in phrases:
        if phrase.words:
            grouped.setdefault(len(phrase.words), []).append(tuple(phrase.words))
    return {count: tuple(group) for count, group in grouped.items()}


def _parse_rule(section: Section) -> PatternRule | None:
    section.reject_unknown(_RULE_FIELDS)
    name = section.str("name")
    if not name:
        raise section.error("every rule needs a name", "name")
    phrases = _normalized_phrases(section, "phrases")
    keyword_sets = tuple(frozenset(p.squeezed.split())
                         for p in _normalized_phrases(section, "keyword_sets"))
    regex = parse_regex(section, "regex")
    if not phrases and not keyword_sets and regex is None:
        raise section.error("needs at least one of phrases, keyword_sets or regex")
    texts = section.strs("replies", ())
    if not texts:
        raise section.error("needs at least one reply", "replies")
    rule = PatternRule(
        name=name,
        phrases=frozenset(p.squeezed for p in phrases),
        phrase_words=_by_word_count(phrases),
        typos=section.bool("typos", False),
        keyword_sets=keyword_sets,
        regex=regex,
        replies=tuple(_parse_reply(section, i, t) for i, t in enumerate(texts)),
        pick=section.choice("pick", PICKS, "random"),
        when=parse_conditions(section, question=False),
        mode=parse_mode(section),
    )
    return rule if section.bool("enabled", True) else None


def parse_rules(section: Section) -> PatternRules:
    """Validate the `[patterns]` table (raises ConfigError naming file, rule and field)."""
    section.reject_unknown({"rules", "timezone"})
    rules = parse_named_rules(section, _parse_rule)
    return PatternRules(tuple(rules), parse_timezone(section, "timezone", None))


def bypass_reason(body: Mapping[str, Any]) -> str | None:
    """Why a request needs a real model whatever its text says (None: a canned reply may do)."""
    if (body.get("n") or 1) > 1:
        return "n > 1 asks for several answers"
    forced_tool = body.get("tool_choice") == "required" or isinstance(body.get("tool_choice"),
                                                                       dict)
    if (body.get("tools") and forced_tool) or (
            body.get("functions") and isinstance(body.get("function_call"), dict)):
        return "the request forces a tool call"
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type", "text") != "text":
        return "structured output requested"
    if body.get("logprobs"):
        return "logprobs requested"
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content") if isinstance(messages[-1], Mapping) else None
    if isinstance(content, list) and any(isinstance(p, Mapping) and p.get("type") != "text"
                                         for p in content):
        return "the message carries an image, audio or file"
    return None


class PatternStage:
    """Answers matching messages with a canned reply; passes everything else on."""

    name = "patterns"

    def __init__(self, rules: PatternRules, default_timezone: str, rotation: dict[str, int],
                 *, clock: Clock = utc_now, rng: random.Random | None = None) -> None:
        self.rules = rules
        self.timezone = rules.timezone or default_timezone
        self.rotation = rotation
        self.clock = clock
        self.rng = rng or random.Random()

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        if not self.rules.rules:
            return await call_next(ctx)
        facts = RequestFacts(ctx, self.timezone, self.clock)
        skip = bypass_reason(ctx.body)
        if skip is None and facts.last_user_text is None:
            skip = "the last message is not a user message"
        elif skip is None and len(facts.last_user_text or "") > MAX_ANALYZED_CHARS:
            skip = f"the last message is longer than {MAX_ANALYZED_CHARS} characters"
        if skip is not None:
            ctx.decide(self.name, "skip", skip)
            return await call_next(ctx)
        for rule in self.rules.rules:
            if not rule.matches_text(facts):
                continue
            if rule.when.needs_tokens:
                await facts.settle_prompt_tokens(rule.when.min_tokens, rule.when.max_tokens)
            if rule.when.holds(facts):
                if not rule.mode.acts(ctx.request_id, rule.name):
                    ctx.decide(self.name, "shadow", f"rule {rule.name!r} would answer",
                               rule=rule.name, mode=rule.mode.kind, would="answer")
                    continue
                content = self._pick(rule, facts.metadata, advance=not ctx.dry_run)
                if content is not None:
                    ctx.decide(self.name, "answer", f"rule {rule.name!r} matched", rule=rule.name)
                    return self._reply(ctx, content, await facts.exact_prompt_tokens())
        ctx.decide(self.name, "pass", "no rule matched")
        return await call_next(ctx)

    def _pick(self, rule: PatternRule, metadata: Mapping[str, Any], advance: bool) -> str | None:
        usable = [t for t in (r.render(metadata) for r in rule.replies) if t is not None]
        if not usable:
            return None
        if rule.pick == "random":
            return self.rng.choice(usable)
        turn = self.rotation.get(rule.name, 0)
        if advance:
            self.rotation[rule.name] = turn + 1
        return usable[turn % len(usable)]

    @staticmethod
    def _reply(ctx: Context, content: str, prompt_tokens: int) -> Reply:
        model = ctx.requested_model
        saved = Usage(prompt_tokens, tokens.count_text(content, model))
        return free_reply(ctx, make_completion(model, content), stage=REPLY_STAGE,
                          saved_usage=saved)


def build(rules: PatternRules, resources: Resources) -> PatternStage:
    """The stage for `rules`; rotation counters survive rule reloads."""
    rotation = resources.kept.setdefault(ROTATION, dict)
    return PatternStage(rules, resources.config.server.timezone, rotation)
