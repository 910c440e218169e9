"""What a pass-through answer used and what it costs, read from its bytes as they pass.

`UsageReader` keeps a copy of a JSON answer up to INSPECT_BYTES (parsed whole at the
end) and the last TAIL_BYTES of JSON and SSE answers, where a larger answer's
`usage` is found (OpenAI writes it last); audio, files and other bodies are not
looked at. Usage is read in both of OpenAI's spellings (prompt/completion_tokens,
input/output_tokens); usage counted in seconds (whisper) is not priced.

`tap_usage` wraps a forwarded answer's chunks so that, once it has passed whole and
2xx, `ctx.passthrough_answer` holds the parsed JSON (when read whole) and
`ctx.passthrough_bill` what it is billed. A batch object is billed once, at the batch
price, by the first request that sees it finished: a marker in the limit store makes
that exactly once across processes and restarts, however often clients poll it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from proxy.pipeline.core import Bill, Chunks, Context, Reply, Usage
from proxy.pricing import PriceTable
from proxy.store.limits import LimitStore

log = logging.getLogger("proxy.passthrough")

INSPECT_BYTES = 16 * 1024 * 1024  # a JSON answer up to this size is parsed whole
TAIL_BYTES = 64 * 1024  # of a larger one (or a stream), only its end is searched for usage
BATCH_FINISHED = frozenset({"completed", "expired", "cancelled", "failed"})
BATCH_MARK_SECONDS = 90 * 86_400.0  # batches and their output outlive OpenAI's 30 days
_DECODER = json.JSONDecoder()


def usage_of(value: Any) -> Usage | None:
    """Token counts of an OpenAI `usage` object in either spelling (None: no tokens)."""
    if not isinstance(value, Mapping):
        return None
    prompt = value.get("prompt_tokens", value.get("input_tokens"))
    completion = value.get("completion_tokens", value.get("output_tokens"))
    if not isinstance(prompt, int) and not isinstance(completion, int):
        return None
    return Usage(prompt if isinstance(prompt, int) else 0,
                 completion if isinstance(completion, int) else 0)


def usage_in_tail(tail: bytes) -> Any:
    """The value of the last `"usage"` member in the end of a JSON or SSE body, if any."""
    text = tail.decode("utf-8", "replace")
    at = text.rfind('"usage"')
    if at < 0:
        return None
    rest = text[at + len('"usage"'):].lstrip()
    if not rest.startswith(":"):
        return None
    try:
        value, _ = _DECODER.raw_decode(rest[1:].lstrip())
    except ValueError:
        return None
    return value


class UsageReader:
    """Watches an answer's bytes go by; afterwards tells its JSON document and usage."""

    def __init__(self, content_type: str) -> None:
        kind = content_type.split(";", 1)[0].strip().lower()
        is_json = kind == "application/json" or kind.endswith("+json")
        self.active = is_json or kind == "text/event-stream"
        self._body: bytearray | None = bytearray() if is_json else None
        self._tail = b""

    def feed(self, data: bytes) -> None:
        """Take the next piece of the body."""
        if not self.active:
            return
        if self._body is not None:
            if len(self._body) + len(data) <= INSPECT_BYTES:
                self._body += data
                return
            self._tail, self._body = bytes(self._body[-TAIL_BYTES:]), None
        self._tail = (self._tail + data)[-TAIL_BYTES:]

    def document(self) -> dict[str, Any] | None:
        """The answer parsed, when it was a JSON object read whole."""
        if not self._body:
            return None
        try:
            doc = orjson.loads(self._body)
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None

    def usage(self, document: Mapping[str, Any] | None) -> Usage | None:
        """The answer's usage: from its document, else from the end of its body."""
        if document is not None:
            return usage_of(document.get("usage"))
        return usage_of(usage_in_tail(self._tail)) if self.active else None


async def bill_for(ctx: Context, document: Mapping[str, Any] | None, usage: Usage | None,
                   prices: PriceTable, limits: LimitStore) -> Bill | None:
    """The Bill of an answer with usage (a batch only the first time it is seen finished)."""
    if usage is None:
        return None
    model = str((document or {}).get("model") or ctx.model)
    if document is None or document.get("object") != "batch":
        return Bill(model, usage, prices.cost(model, usage.prompt_tokens, usage.completion_tokens))
    if document.get("status") not in BATCH_FINISHED or not document.get("id"):
        return None
    try:
        first = await limits.claim(f"batch-billed:{document['id']}", BATCH_MARK_SECONDS)
    except Exception as exc:  # the store is down: the next poll bills it
        log.warning("batch %s not billed yet, limit store unavailable: %s", document["id"], exc)
        return None
    if not first:
        return None
    return Bill(model, usage, prices.batch_cost(model, usage.prompt_tokens,
                                                usage.completion_tokens), batch=True)


def total_bill(bills: list[Bill | None]) -> Bill | None:
    """Several bills as one (the first one's model), e.g. the parts of one batch."""
    found = [bill for bill in bills if bill is not None]
    if len(found) <= 1:
        return found[0] if found else None
    usage = Usage(sum(b.usage.prompt_tokens for b in found),
                  sum(b.usage.completion_tokens for b in found),
                  sum(b.usage.cached_tokens for b in found))
    return Bill(found[0].model, usage, sum(b.cost_usd for b in found),
                batch=any(b.batch for b in found))


def tap_usage(ctx: Context, reply: Reply, prices: PriceTable, limits: LimitStore) -> None:
    """Read the streaming answer's usage as it passes (JSON and SSE answers only)."""
    content_type = next((v for k, v in reply.headers.items() if k.lower() == "content-type"), "")
    reader = UsageReader(content_type)
    if reply.chunks is not None and reader.active:
        reply.chunks = _tapped(reply.chunks, reader, ctx, reply, prices, limits)


async def _tapped(chunks: Chunks, reader: UsageReader, ctx: Context, reply: Reply,
                  prices: PriceTable, limits: LimitStore) -> AsyncIterator[bytes]:
    try:
        async for data in chunks:
            reader.feed(data)
            yield data
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    if not (reply.completed and reply.ok):
        return
    document = reader.document()
    if document is not None:
        ctx.passthrough_answer = document
        if isinstance(document.get("model"), str):
            reply.model = document["model"]
    bill = await bill_for(ctx, document, reader.usage(document), prices, limits)
    if bill is not None:
        ctx.passthrough_bill = bill
        reply.usage, reply.model = bill.usage, bill.model
