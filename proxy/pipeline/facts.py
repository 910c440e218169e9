"""What rule conditions test about one request, each fact computed on first use."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from proxy import tokens
from proxy.pipeline.core import Context
from proxy.pipeline.text import (
    RULE_TEXT_CHARS,
    NormalizedText,
    content_text,
    last_user_text,
    readings,
)

OPTIMIZE_FOR = ("cost", "latency", "quality")
OPTIMIZE_HEADER = "x-proxy-optimize-for"
_INLINE_TOKENIZE_BYTES = 8_192
# Only a run that starts after a word character or "?" is tried: linear, not quadratic.
_TRAILING_NON_WORDS = re.compile(r"(?<![^\w?])[^\w?]+$")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time (the default clock)."""
    return datetime.now(UTC)


class RequestFacts:
    """What conditions test about one request, each computed on first use.

    Before testing conditions on prompt tokens, the stage awaits
    `settle_prompt_tokens(low, high)`: tokenizing a long history costs far more than
    everything else here, so the exact count is made only when a cheap upper bound
    (the body's JSON bytes, every token being at least one byte, plus image
    allowances) cannot settle the comparison.
    """

    def __init__(self, ctx: Context, default_timezone: str, clock: Clock = utc_now) -> None:
        self.ctx = ctx
        self.default_timezone = default_timezone
        self.clock = clock
        self.prompt_tokens: int | None = None
        self._exact_tokens: int | None = None

    async def settle_prompt_tokens(self, low: int | None, high: int | None) -> None:
        """Set `prompt_tokens` precisely enough to test the bounds `low` and `high`."""
        ceiling = self.prompt_token_ceiling
        if (low is not None and ceiling < low) or (low is None and high is not None
                                                   and ceiling <= high):
            self.prompt_tokens = ceiling
        else:
            self.prompt_tokens = await self.exact_prompt_tokens()

    async def exact_prompt_tokens(self) -> int:
        """The request's prompt tokens, counted once (in a worker thread when big)."""
        if self._exact_tokens is None:
            self._exact_tokens = await count_prompt_tokens(self.ctx.body)
        return self._exact_tokens

    @cached_property
    def prompt_token_ceiling(self) -> int:
        """An upper bound of the prompt tokens, without tokenizing."""
        images = sum(1 for m in self.ctx.messages if isinstance(m.get("content"), list)
                     for p in m["content"] if isinstance(p, Mapping)
                     and p.get("type") == "image_url")
        return len(orjson.dumps(self.ctx.body)) + _image_allowance() * images

    @cached_property
    def last_user_text(self) -> str | None:
        """The last message's text when it is a user message."""
        return last_user_text(self.ctx.messages)

    @cached_property
    def readings(self) -> tuple[NormalizedText, ...]:
        """The last user message normalized (and with check marks read as "done"); of a
        long message, its first RULE_TEXT_CHARS characters."""
        return readings((self.last_user_text or "")[:RULE_TEXT_CHARS])

    @property
    def text(self) -> NormalizedText:
        """The last user message, normalized."""
        return self.readings[0]

    @cached_property
    def word_count(self) -> int:
        """Words in the last user message (an emoji-only message counts as one)."""
        return len(self.text.words) or (1 if self.text.squeezed else 0)

    @property
    def is_question(self) -> bool:
        """True when the last user message asks something (contains '?')."""
        return self.text.is_question

    @cached_property
    def after_question(self) -> bool:
        """True when the assistant's previous message ended with a question."""
        for message in reversed(self.ctx.messages[:-1]):
            if message.get("role") == "assistant":
                tail = content_text(message.get("content"))[-RULE_TEXT_CHARS:]
                text = _TRAILING_NON_WORDS.sub("", tail)
                return text.endswith("?")
        return False

    @cached_property
    def user_messages(self) -> int:
        """User messages in the conversation (the current one's number)."""
        return sum(1 for m in self.ctx.messages if m.get("role") == "user")

    @property
    def message_count(self) -> int:
        """Messages in the request."""
        return len(self.ctx.messages)

    @property
    def has_tools(self) -> bool:
        """True when the request carries tool or function definitions."""
        return bool(self.ctx.body.get("tools") or self.ctx.body.get("functions"))

    @cached_property
    def has_images(self) -> bool:
        """True when any message has an image part."""
        return any(isinstance(m.get("content"), list) and any(
            isinstance(p, Mapping) and p.get("type") == "image_url" for p in m["content"])
            for m in self.ctx.messages)

    @property
    def response_format(self) -> str:
        """The requested response format type ('text' when none)."""
        fmt = self.ctx.body.get("response_format")
        return str(fmt.get("type", "text")) if isinstance(fmt, Mapping) else "text"

    @cached_property
    def metadata(self) -> Mapping[str, Any]:
        """The request's `metadata` object (empty when absent)."""
        meta = self.ctx.body.get("metadata")
        return meta if isinstance(meta, Mapping) else {}

    @cached_property
    def optimize_for(self) -> str | None:
        """The client's hint from the x-proxy-optimize-for header or metadata.optimize_for."""
        hint = self.ctx.headers.get(OPTIMIZE_HEADER) or self.metadata.get("optimize_for")
        hint = str(hint).strip().lower() if hint else None
        return hint if hint in OPTIMIZE_FOR else None

    @cached_property
    def local_hour(self) -> int:
        """The hour of day in the request's time zone (metadata.timezone) or the default."""
        zone = None
        requested = self.metadata.get("timezone")
        if isinstance(requested, str):
            try:
                zone = ZoneInfo(requested)
            except (ZoneInfoNotFoundError, ValueError):
                zone = None
        return self.clock().astimezone(zone or ZoneInfo(self.default_timezone)).hour


@functools.cache
def _image_allowance() -> int:
    """Tokens one image adds to a prompt (with its message framing), as tokens.py counts."""
    return tokens.count_messages([{"role": "user", "content": [{"type": "image_url"}]}])


async def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Prompt tokens of a request; big prompts are tokenized in a worker thread."""
    if len(orjson.dumps(body)) <= _INLINE_TOKENIZE_BYTES:
        return tokens.count_request(body)
    return await asyncio.to_thread(tokens.count_request, body)
