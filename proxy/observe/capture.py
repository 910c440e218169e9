"""Captures the assistant's answer of one request for the body log and the ledger.

A no-op for most requests: it only snapshots the messages when the key has
`log_bodies` on, and only reads the answer when bodies are logged or tools were
forwarded (the ledger notes which tools the answer called). Streams are tapped
chunk by chunk and assembled; nothing is buffered for the client.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from proxy.pipeline.core import Chunks, Context, Reply
from proxy.pipeline.replies import StreamAssembler
from proxy.store.bodies import BodyRecord
from proxy.upstream.sse import split_events

log = logging.getLogger("proxy.capture")


def logs_bodies(ctx: Context) -> bool:
    """True when the request's key has body logging switched on."""
    policy = ctx.tenant.policy
    return bool(policy is not None and policy.log_bodies)


class AnswerCapture:
    """The messages a client sent (when logged) and the answer it got."""

    def __init__(self, ctx: Context) -> None:
        self.messages: bytes | None = orjson.dumps(ctx.messages) if logs_bodies(ctx) else None
        self._assembler: StreamAssembler | None = None
        self._answer: dict[str, Any] | None = None

    def attach(self, ctx: Context, reply: Reply) -> None:
        """Start watching `reply` if anything needs its answer."""
        if self.messages is None and not (ctx.body.get("tools") or ctx.body.get("functions")):
            return
        if reply.chunks is not None:
            self._assembler = StreamAssembler()
            reply.chunks = self._tap(reply.chunks, self._assembler)
        elif reply.ok:
            try:
                parsed = reply.json()
            except orjson.JSONDecodeError:
                return
            self._answer = parsed if isinstance(parsed, dict) else None

    async def _tap(self, chunks: Chunks, assembler: StreamAssembler) -> Chunks:
        rest = b""
        try:
            async for chunk in chunks:
                yield chunk
                if self._assembler is None:
                    continue
                events, rest = split_events(rest + chunk)
                try:
                    assembler.feed_events(events)
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    log.warning("could not assemble a streamed answer; it is not captured")
                    self._assembler = None
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    def answer(self) -> dict[str, Any] | None:
        """The complete chat.completion, or None (not watched, failed, or stream cut)."""
        if self._assembler is not None:
            return self._assembler.completion() if self._assembler.done else None
        return self._answer

    def body_record(self, ctx: Context, ts: float) -> BodyRecord | None:
        """The body-log row for this request, when bodies are logged and there is an answer."""
        answer = self.answer()
        if self.messages is None or not answer:
            return None
        choices = answer.get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content")
        if not isinstance(text, str) or not text:
            return None
        return BodyRecord(ctx.request_id, ts, ctx.tenant.name, str(answer.get("model") or
                                                                   ctx.model),
                          self.messages.decode(), text)
