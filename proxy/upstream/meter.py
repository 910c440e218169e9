"""Count the completion tokens a stream carried, for when the upstream never says.

The upstream bills every token it generated, whether the stream ended with a
usage chunk or not: it may have been cut (by the upstream, or by the proxy after
its client left and a drain bound was hit), or the upstream ignores
`stream_options.include_usage`. Then the bill is estimated as the request's
prompt tokens plus the tokens of everything the choices streamed (content,
refusals, tool calls), counted with the model's tokenizer.

The meter keeps the raw events only until a batch is full, then counts them and
drops them: a short stream that ends with its usage chunk is never looked at, and a
long one is never held whole. A batch is read with one regex pass for the JSON
string values of `content`, `refusal` and a tool call's `name` and `arguments`
(decoded together once), not parsed event by event: it runs for every long stream.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from proxy import tokens
from proxy.pipeline.core import Usage

BATCH_BYTES = 32 * 1024
_GENERATED = re.compile(rb'"(?:content|refusal|name|arguments)"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')


def generated_text(events: bytes) -> str:
    """The text the model generated in a run of chat.completion.chunk events."""
    pieces = _GENERATED.findall(events)
    if not pieces:
        return ""
    joined = b"".join(pieces)
    try:
        return str(orjson.loads(b'"' + joined + b'"'))
    except orjson.JSONDecodeError:  # a broken escape: count the text as it came
        return joined.decode("utf-8", "replace")


class CompletionMeter:
    """Counts the completion tokens of the SSE events fed to it (whole events only)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._pending = bytearray()
        self._tokens = 0

    def feed(self, events: bytes) -> None:
        """Take SSE events that went by; counts them once a batch is full."""
        self._pending += events
        if len(self._pending) >= BATCH_BYTES:
            self._count()

    def usage(self, body: Mapping[str, Any]) -> Usage:
        """The estimated usage: the prompt tokens of `body` sent to the meter's model plus
        the completion tokens streamed."""
        self._count()
        return Usage(tokens.prompt_tokens({**body, "model": self.model}), self._tokens)

    def _count(self) -> None:
        if self._pending:
            text = generated_text(bytes(self._pending))
            self._pending.clear()
            if text:
                self._tokens += tokens.count_text(text, self.model)
