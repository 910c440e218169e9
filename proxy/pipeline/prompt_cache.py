"""The upstream's prompt cache: OpenAI's caching rule, a conversation's cache key, and
what the client's own request would have found in the cache.

OpenAI reuses the longest prefix of a prompt (tools, then messages) that an earlier
request sent, once the prefix is at least CACHE_MIN_TOKENS long, in steps of
CACHE_STEP_TOKENS, and bills those `cached_tokens` at the model's cached-input rate.
Requests are routed to a cache by a hash of the prefix and the `prompt_cache_key`;
the proxy names each conversation's key (`conversation_key`) when the client sent
none, so a conversation's turns meet the prefix its earlier turns left behind.

The baseline (what a request would have cost without the proxy) assumes the
client's request would have found its previous turn in the cache: a chat app
resends the whole history, so its previous request (everything before the last
assistant message) is a prefix of this one. That is a warm cache, the best case
for the client; savings computed against it are a floor (see accounting.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from proxy import tokens

CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128
INSTRUCTION_ROLES = frozenset({"system", "developer"})


def cacheable_tokens(prefix_tokens: int) -> int:
    """How many tokens of a prefix this long a later request reads from the cache."""
    if prefix_tokens < CACHE_MIN_TOKENS:
        return 0
    steps = (prefix_tokens - CACHE_MIN_TOKENS) // CACHE_STEP_TOKENS
    return CACHE_MIN_TOKENS + steps * CACHE_STEP_TOKENS


def conversation_key(namespace: str, messages: Sequence[Any]) -> str:
    """A stable name of the conversation these messages belong to: a hash of the key's
    cache namespace and the messages up to the first user message (the instructions
    and how the user opened), which every later turn resends unchanged."""
    opening: list[Any] = [namespace]
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        opening.append([str(message.get("role")), tokens.content_text(message.get("content"))])
        if message.get("role") not in INSTRUCTION_ROLES:
            break
    return "pc-" + hashlib.sha256(orjson.dumps(opening)).hexdigest()[:32]


def previous_turn_tokens(body: Mapping[str, Any]) -> int:
    """Prompt tokens of the client's previous request in this conversation: this body
    up to its last assistant message, with the same tools (0 on a first turn)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    last = next((i for i in range(len(messages) - 1, -1, -1)
                 if isinstance(messages[i], Mapping)
                 and messages[i].get("role") == "assistant"), None)
    if last is None:
        return 0
    return tokens.prompt_tokens({**body, "messages": messages[:last]})


def warm_cached_tokens(body: Mapping[str, Any]) -> int:
    """The cached tokens the client's request would have had with its previous turn in
    the upstream's cache."""
    return cacheable_tokens(previous_turn_tokens(body))
