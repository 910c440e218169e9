"""The fake upstream's prompt cache: OpenAI's prefix caching, simulated offline.

A prompt is read as one token sequence: the tool definitions, then each message
(role, name, content, tool calls, tool call id). Each prefix that ends on a cache
boundary (CACHE_MIN_TOKENS, then every CACHE_STEP_TOKENS) is remembered by a hash
chained over its tokens, under the request's model and `prompt_cache_key`. A later
request reports as `cached_tokens` the longest remembered prefix it starts with, so
changing one byte of the tools or of an early message costs everything after it,
as it does upstream. Entries live `ttl` seconds after their last use (OpenAI keeps
them 5-10 minutes) by `clock` (a replay can set its own); at most `max_entries` are
kept, least recently used go first.
"""

from __future__ import annotations

import functools
import hashlib
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson

from proxy import tokens
from proxy.pipeline.prompt_cache import CACHE_MIN_TOKENS, CACHE_STEP_TOKENS


@functools.lru_cache(maxsize=65_536)
def _token_ids(encoding_name: str, text: str) -> tuple[int, ...]:
    return tuple(tokens.encoding(encoding_name).encode_ordinary(text))


def _segments(body: Mapping[str, Any]) -> Iterator[str]:
    """The prompt's parts in the order the model reads them."""
    tools = body.get("tools") or body.get("functions")
    if tools:
        yield orjson.dumps(tools).decode()
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        parts = [str(message.get("role", "")), str(message.get("name") or ""),
                 tokens.content_text(message.get("content"))]
        if message.get("tool_calls"):
            parts.append(orjson.dumps(message["tool_calls"]).decode())
        if message.get("tool_call_id"):
            parts.append(str(message["tool_call_id"]))
        yield "\n".join(parts)


def prompt_token_ids(body: Mapping[str, Any]) -> list[int]:
    """The request's prompt as one token sequence."""
    name = tokens.encoding_for_model(str(body.get("model", ""))).name
    ids: list[int] = []
    for segment in _segments(body):
        ids.extend(_token_ids(name, segment))
    return ids


def _boundary_digests(scope: bytes, ids: list[int]) -> Iterator[tuple[int, bytes]]:
    """(prefix length, hash of the scope and that prefix) at every cache boundary."""
    running = hashlib.sha256(scope)
    done = 0
    boundary = CACHE_MIN_TOKENS
    while boundary <= len(ids):
        running.update(array("I", ids[done:boundary]).tobytes())
        done = boundary
        yield boundary, running.copy().digest()
        boundary += CACHE_STEP_TOKENS


class FakePromptCache:
    """Remembers prompt prefixes and says how much of a new prompt was seen before."""

    def __init__(self, ttl: float = 600.0, max_entries: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def clear(self) -> None:
        """Forget every prefix."""
        self._seen.clear()

    def read_and_write(self, body: Mapping[str, Any]) -> int:
        """The cached tokens of this request; its own prefixes are remembered from now on."""
        messages = body.get("messages")
        if not isinstance(messages, list):
            return 0
        ids = prompt_token_ids(body)
        if len(ids) < CACHE_MIN_TOKENS:
            return 0
        scope = orjson.dumps([str(body.get("model", "")), body.get("prompt_cache_key")])
        now = self.clock()
        cached, hit = 0, True
        for length, digest in _boundary_digests(scope, ids):
            used = self._seen.pop(digest, None)
            if hit and used is not None and now - used <= self.ttl:
                cached = length
            else:
                hit = False
            self._seen[digest] = now
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return cached
