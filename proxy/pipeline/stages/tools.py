"""Tool-definition stripping: send only the tool definitions a request can need.

A chat app often declares the same tools (hundreds of tokens) with every
message. A tool is *related* to a request when a keyword of the last user
message matches one of the tool's keywords: the words of its name
(`get_weather` -> get, weather), the content words of its description, and
extra keywords from the rules; stopwords (including generic verbs such as
get/set/fetch) never count. Unrelated tools are dropped (`mode = "per_tool"`)
or all tools go only when none relates (`mode = "all_or_none"`); with no tool
left, a then-dangling `tool_choice` / `parallel_tool_calls` / `function_call`
goes too. Tools are always kept when a tool is forced by `tool_choice`, when a
tool call in the history still waits for its result, when the last message is
a tool result (the model may chain calls), and for the models the rules name.

A message that only answers the assistant's last turn ("yes, do it", "sure, log
that", "go ahead") names no tool itself: when the follow-up detector calls it a
short reply, a continuation or a pointer back, the question the assistant turn
ended with ("Want me to update your goal?") and the tools it called count as the
request's keywords too, so an offer the user accepts still finds its tool. Only
that closing question: the rest of a long answer would relate every tool.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from proxy import tokens
from proxy.config import Section
from proxy.pipeline.core import Context, Next, Reply
from proxy.pipeline.semantic.followup import context_dependence
from proxy.pipeline.text import MAX_ANALYZED_CHARS, RULE_TEXT_CHARS, content_text

if TYPE_CHECKING:
    from proxy.resources import Resources

MODES = ("per_tool", "all_or_none")
RESULT_ROLES = frozenset({"tool", "function"})
# Function words, and words every tool definition uses without saying what it is about.
_STOPWORD_TEXT = """
a about above after again all also am an and any are as at be because been before being
below between both but by can could did do does doing done down during each else few for
from further had has have having he her here hers him his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours out over
own same she should so some such than that the their them then there these they this those
through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself ok okay yes yeah please thanks thank hi hello hey
want need like really know think get gets set fetch retrieve return returns returned use
uses used using function tool call calls called given specified provided provide provides
information info data value values optional required parameter parameters param args
argument arguments result results object string number list user users current
today tonight tomorrow yesterday day days time times e.g etc
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD = re.compile(r"[a-z][a-z0-9]*")
_SUFFIXES = ("ing", "ed", "es", "s", "e")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Follow-up kinds that answer the assistant's last turn rather than say something new.
REPLY_KINDS = frozenset({"short reply", "continues the conversation",
                         "points back at something said before",
                         "asks to rework the previous answer"})


@dataclass(frozen=True, slots=True)
class ToolRules:
    """The `[tools]` table: when tool definitions may be dropped."""

    enabled: bool = True
    mode: str = "per_tool"
    keep_for_models: tuple[str, ...] = ()
    use_descriptions: bool = True
    keywords: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    ignore_words: frozenset[str] = frozenset()


def parse_rules(section: Section) -> ToolRules:
    """Validate the `[tools]` table (errors name file, table and field)."""
    section.reject_unknown({"enabled", "mode", "keep_for_models", "use_descriptions",
                            "keywords", "ignore_words"})
    extra = section.sub("keywords")
    keywords = {}
    for tool in extra.table:
        stems = frozenset(stem(w) for text in extra.strs(tool, ()) for w in split_words(text))
        if not stems:
            raise extra.error("expected at least one word", tool)
        keywords[tool] = stems
    return ToolRules(
        enabled=section.bool("enabled", True),
        mode=section.choice("mode", MODES, "per_tool"),
        keep_for_models=section.strs("keep_for_models", ()),
        use_descriptions=section.bool("use_descriptions", True),
        keywords=MappingProxyType(keywords),
        ignore_words=frozenset(w.lower() for w in section.strs("ignore_words", ())),
    )


def build(rules: ToolRules, resources: Resources) -> ToolStripper:
    """The stage for these rules."""
    return ToolStripper(rules)


def split_words(text: str) -> list[str]:
    """Lower-case words of a name or sentence (`getWeather`, `get_weather` -> get, weather)."""
    return _WORD.findall(_CAMEL.sub(r"\1 \2", text).lower())


@functools.lru_cache(maxsize=65_536)
def stem(word: str) -> str:
    """A crude stem so that log/logs/logged/logging (or note/notes) compare equal."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not (
                suffix == "s" and word.endswith("ss")):
            word = word[: -len(suffix)]
            if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "aeioulsz":
                word = word[:-1]
            break
    return word


def content_stems(text: str, ignore: frozenset[str] = frozenset()) -> frozenset[str]:
    """Stems of the words in `text` that carry meaning (no stopwords, no 1-2 letter words)."""
    return frozenset(stem(w) for w in split_words(text)
                     if len(w) > 2 and w not in STOPWORDS and w not in ignore)


@functools.lru_cache(maxsize=4096)
def _definition_stems(name: str, description: str, ignore: frozenset[str]) -> frozenset[str]:
    return content_stems(name.replace("_", " "), ignore) | content_stems(description, ignore)


def _function_of(tool: Any, legacy: bool) -> Mapping[str, Any] | None:
    """The function definition inside a `tools` item (or a legacy `functions` item)."""
    if legacy:
        return tool if isinstance(tool, Mapping) else None
    if isinstance(tool, Mapping) and tool.get("type") == "function":
        function = tool.get("function")
        return function if isinstance(function, Mapping) else None
    return None


def tool_name(tool: Any, legacy: bool = False) -> str:
    """The function name of a tool definition ('' when it has none)."""
    function = _function_of(tool, legacy)
    return str(function.get("name") or "") if function else ""


def open_tool_call(messages: Iterable[Mapping[str, Any]]) -> bool:
    """True when an assistant tool/function call in the history still lacks its result."""
    pending: set[str] = set()
    legacy_pending = False
    for message in messages:
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                pending.add(str(call.get("id")) if isinstance(call, Mapping) else "")
            legacy_pending = legacy_pending or bool(message.get("function_call"))
        elif role == "tool":
            pending.discard(str(message.get("tool_call_id")))
        elif role == "function":
            legacy_pending = False
    return bool(pending) or legacy_pending


def closing_question(message: Mapping[str, Any]) -> str:
    """The question an assistant turn ends with ('' when it ends otherwise), followed by
    the names of the tools it called."""
    tail = content_text(message.get("content"))[-RULE_TEXT_CHARS:]
    sentences = _SENTENCE_END.split(tail.strip())
    question = sentences[-1] if sentences[-1].endswith("?") else ""
    calls = message.get("tool_calls")
    called = [str(c["function"].get("name", "")) for c in calls
              if isinstance(c, Mapping) and isinstance(c.get("function"), Mapping)
              ] if isinstance(calls, list) else []
    return " ".join([question, *called]).strip()


def request_text(messages: list[dict[str, Any]]) -> str:
    """What the request is about: the last user message, preceded by the assistant's
    closing question when the message only replies to it ('' without a user message)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") != "user":
            continue
        text = content_text(messages[i].get("content"))
        before = messages[i - 1] if i > 0 else None
        if before is not None and before.get("role") == "assistant" and \
                len(text) <= MAX_ANALYZED_CHARS and context_dependence(text) in REPLY_KINDS:
            return f"{closing_question(before)} {text}"
        return text
    return ""


class ToolStripper:
    """Drops the tool definitions a request does not need, and records the tokens saved."""

    name = "tools"

    def __init__(self, rules: ToolRules) -> None:
        self.rules = rules

    def _must_keep(self, ctx: Context, legacy: bool) -> str | None:
        """Why every tool has to stay, or None when stripping is allowed."""
        body, messages = ctx.body, ctx.messages
        if not self.rules.enabled:
            return "tool stripping is off (tools.enabled = false)"
        if any(fnmatch.fnmatchcase(ctx.model, p) for p in self.rules.keep_for_models):
            return f"model {ctx.model} always keeps its tools (tools.keep_for_models)"
        choice = body.get("function_call" if legacy else "tool_choice")
        if choice == "required" or isinstance(choice, Mapping):
            return f"{'function_call' if legacy else 'tool_choice'} forces a tool"
        if open_tool_call(messages):
            return "a tool call in the history still waits for its result"
        if messages and messages[-1].get("role") in RESULT_ROLES:
            return "the last message is a tool result; the model may chain another call"
        return None

    def related(self, tool: Any, legacy: bool, wanted: frozenset[str]) -> bool:
        """True when the tool relates to the request's keywords (unknown kinds always do)."""
        function = _function_of(tool, legacy)
        if function is None:
            return True
        name = str(function.get("name") or "")
        description = str(function.get("description") or "") if self.rules.use_descriptions else ""
        own = _definition_stems(name, description, self.rules.ignore_words)
        return bool(wanted & (own | self.rules.keywords.get(name, frozenset())))

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        body = ctx.body
        legacy = not body.get("tools") and bool(body.get("functions"))
        tools = body.get("functions" if legacy else "tools")
        if not tools or not isinstance(tools, list):
            return await call_next(ctx)
        reason = self._must_keep(ctx, legacy)
        if reason:
            ctx.decide(self.name, "kept", reason, kept=len(tools), dropped=0, tokens_saved=0)
            return await call_next(ctx)
        choice = body.get("function_call" if legacy else "tool_choice")
        if choice == "none":
            kept: list[Any] = []
            why = "tool_choice is 'none': the model may not call any tool"
        elif len(text := request_text(ctx.messages)) > RULE_TEXT_CHARS:
            kept = list(tools)
            why = f"the request's text is longer than {RULE_TEXT_CHARS} characters (not searched)"
        else:
            wanted = content_stems(text, self.rules.ignore_words)
            kept = [t for t in tools if self.related(t, legacy, wanted)]
            if kept and self.rules.mode == "all_or_none":
                kept = list(tools)
            why = (f"the last user message relates to {_names(kept, legacy)}" if kept
                   else "no keyword of the last user message relates to any tool")
        if len(kept) == len(tools):
            ctx.decide(self.name, "kept", why, kept=len(tools), dropped=0, tokens_saved=0)
            return await call_next(ctx)
        if ctx.baseline_prompt_tokens is None:
            ctx.baseline_prompt_tokens = await tokens.count_request_async(body)
        self._strip(ctx, tools, kept, legacy, why)
        return await call_next(ctx)

    def _strip(self, ctx: Context, tools: list[Any], kept: list[Any], legacy: bool,
               why: str) -> None:
        body = ctx.body
        saved = tokens.tool_tokens(tools, ctx.model) - tokens.tool_tokens(kept, ctx.model)
        kept_ids = {id(t) for t in kept}
        dropped = [t for t in tools if id(t) not in kept_ids]
        if kept:
            body["functions" if legacy else "tools"] = kept
        else:
            for key in (("functions", "function_call") if legacy
                        else ("tools", "tool_choice", "parallel_tool_calls")):
                body.pop(key, None)
        ctx.changed()
        ctx.decide(self.name, "narrowed" if kept else "stripped", why,
                   kept=len(kept), dropped=len(dropped), tokens_saved=saved,
                   kept_tools=_names(kept, legacy), dropped_tools=_names(dropped, legacy))


def _names(tools: list[Any], legacy: bool) -> list[str]:
    return [tool_name(t, legacy) or "?" for t in tools]
