"""Summaries of older conversation turns, made once by a cheap model and reused.

A summary is stored in the KV store under the sha256 of the summarized
messages (canonical JSON) plus the summary model, prompt and length, so the
same prefix is summarized once however many requests carry it. Summaries roll
up: when a longer prefix needs one, the stored summary of the longest shorter
block-aligned prefix is extended with only the new messages. Concurrent
requests for the same summary share one upstream call, made (and paid) through
the `complete` callable of the request that started it (the trim stage passes
one billed to the requesting key, see charges.py). Used by the trim stage and,
with the summary kept on the thread, by thread runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.errors import ProxyError
from proxy.pipeline.core import Usage
from proxy.store.kv import KVStore, StoreError
from proxy.upstream.client import UpstreamClient

log = logging.getLogger("proxy.summary")

SUMMARY_INTRO = "Summary of the earlier conversation: "
DEFAULT_PROMPT = (
    "You compress chat history for an assistant that will continue the conversation. "
    "Summarize the conversation below in a few sentences: who the user is, their goals, "
    "facts and numbers they shared, decisions, commitments and open questions. Write only "
    "the summary, in the third person, no preamble."
)
Message = Mapping[str, Any]
Complete = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class SummaryRules:
    """How summaries are made: model, prompt, length, and how long they are kept."""

    model: str = "gpt-4o-mini"
    max_tokens: int = 200
    prompt: str = DEFAULT_PROMPT
    ttl_seconds: float | None = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Summary:
    """The outcome of asking for a summary.

    `source` is "stored" (found in the store), "made" (this request paid for it),
    "joined" (made by a concurrent request), "missing" (dry run: would be made)
    or "failed" (`error` says why; `text` is None).
    """

    text: str | None
    source: str
    key: str
    usage: Usage | None = None
    error: str | None = None


def summary_message(text: str, role: str = "system") -> dict[str, Any]:
    """The system (or developer) message that stands in for the summarized turns."""
    return {"role": role, "content": SUMMARY_INTRO + text}


def summary_key(messages: Sequence[Message], rules: SummaryRules) -> str:
    """sha256 of the messages' canonical JSON plus what shapes the summary."""
    doc = [rules.model, rules.prompt, rules.max_tokens, list(messages)]
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def transcript(messages: Sequence[Message], previous: str | None = None) -> str:
    """The messages as plain text for the summarizer (after an earlier summary, if any)."""
    lines = []
    for message in messages:
        role = str(message.get("role", ""))
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        text = str(content or "")
        calls = message.get("tool_calls") or ([message["function_call"]]
                                              if message.get("function_call") else [])
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function", call) if isinstance(call, Mapping) else {}
            text += f" [called {function.get('name')}({function.get('arguments', '')})]"
        lines.append(f"{role}: {text.strip()}")
    body = "\n".join(lines)
    if previous:
        return f"Summary so far: {previous}\n\nConversation since then:\n{body}"
    return body


class Summarizer:
    """Makes, stores and reuses summaries; one upstream call per distinct prefix.

    `inflight` maps summary keys to the task making them; pass the same dict to
    every Summarizer of a process (e.g. kept in `Resources.kept`) so rule reloads
    keep sharing calls.
    """

    def __init__(self, rules: SummaryRules, upstream: UpstreamClient, kv: KVStore,
                 inflight: dict[str, asyncio.Task[tuple[str, Usage | None]]]) -> None:
        self.rules = rules
        self.upstream = upstream
        self.kv = kv
        self.inflight = inflight

    async def make(self, messages: Sequence[Message], previous: str | None = None,
                   complete: Complete | None = None) -> tuple[str, Usage | None]:
        """Ask the summary model through `complete` (default: the upstream, unbilled; no
        storage); raises ProxyError when it fails or is refused."""
        body = {
            "model": self.rules.model,
            "max_completion_tokens": self.rules.max_tokens,
            "temperature": 0,
            "messages": [{"role": "system", "content": self.rules.prompt},
                         {"role": "user", "content": transcript(messages, previous)}],
        }
        result = await (complete or self.upstream.complete)(body)
        try:
            text = result["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
        if not isinstance(text, str) or not text.strip():
            raise ProxyError(f"summary model {self.rules.model} returned no text")
        return text.strip(), Usage.from_openai(result.get("usage"))

    async def stored(self, namespace: str, messages: Sequence[Message]) -> str | None:
        """The stored summary of exactly these messages, if any."""
        value = await self.kv.get(namespace, summary_key(messages, self.rules))
        return value.decode() if value is not None else None

    async def summarize(self, namespace: str, messages: Sequence[Message], *, step: int = 0,
                        dry_run: bool = False, complete: Complete | None = None) -> Summary:
        """The summary of `messages`: stored, or made once through `complete` (rolling up
        from the stored summary of the longest prefix whose length is a multiple of `step`)."""
        key = summary_key(messages, self.rules)
        task = self.inflight.get(key)
        if task is None:
            try:
                value = await self.kv.get(namespace, key)
            except StoreError as exc:  # no store: truncate rather than pay per request
                return Summary(None, "failed", key, error=str(exc))
            if value is not None:
                return Summary(value.decode(), "stored", key)
            if dry_run:
                return Summary(None, "missing", key)
            task = self.inflight.get(key)
        joined = task is not None
        if task is None:
            task = asyncio.ensure_future(
                self._make_and_store(namespace, key, messages, step, complete))
            self.inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        try:
            text, usage = await asyncio.shield(task)
        except ProxyError as exc:
            return Summary(None, "failed", key, error=exc.message)
        return Summary(text, "joined" if joined else "made", key, None if joined else usage)

    def _forget(self, key: str, task: asyncio.Task[Any]) -> None:
        self.inflight.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("summary %s failed: %s", key[:12], task.exception())

    async def _make_and_store(self, namespace: str, key: str, messages: Sequence[Message],
                              step: int, complete: Complete | None) -> tuple[str, Usage | None]:
        previous, start = None, 0
        if step > 0:
            for start in range((len(messages) - 1) // step * step, 0, -step):
                with contextlib.suppress(StoreError):
                    previous = await self.stored(namespace, messages[:start])
                if previous is not None:
                    break
            else:
                start = 0
        text, usage = await self.make(messages[start:], previous, complete)
        try:
            await self.kv.put(namespace, key, text.encode(), ttl=self.rules.ttl_seconds)
        except StoreError as exc:
            log.warning("summary %s made but not stored: %s", key[:12], exc)
        return text, usage
