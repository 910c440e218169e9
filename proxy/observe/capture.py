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

from proxy.pipeline.core import Context, Reply
from proxy.pipeline.replies import when_answered
from proxy.store.bodies import BodyRecord

log = logging.getLogger("proxy.capture")


def logs_bodies(ctx: Context) -> bool:
    """True when the request's key has body logging switched on."""
    policy = ctx.tenant.policy
    return bool(policy is not None and policy.log_bodies)


class AnswerCapture:
    """The messages a client sent (when logged) and the answer it got."""

    def __init__(self, ctx: Context) -> None:
        self.messages: bytes | None = orjson.dumps(ctx.messages) if logs_bodies(ctx) else None
        self._answer: dict[str, Any] | None = None

    def attach(self, ctx: Context, reply: Reply) -> None:
        """Start watching `reply` if anything needs its answer."""
        if self.messages is None and not (ctx.body.get("tools") or ctx.body.get("functions")):
            return
        if reply.chunks is not None:
            when_answered(reply, self._keep)
        elif reply.ok:
            try:
                parsed = reply.json()
            except orjson.JSONDecodeError:
                return
            self._answer = parsed if isinstance(parsed, dict) else None

    async def _keep(self, completion: dict[str, Any]) -> None:
        self._answer = completion

    def answer(self) -> dict[str, Any] | None:
        """The complete chat.completion, or None (not watched, failed, or stream cut)."""
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
