"""Pass-through parts without HTTP: usage reading and billing, header filtering, estimates."""

from __future__ import annotations

import orjson
import pytest

from proxy.pipeline.core import Usage
from proxy.pipeline.passthrough.budget import embedding_input_tokens
from proxy.pipeline.passthrough.usage import (
    INSPECT_BYTES,
    UsageReader,
    bill_for,
    usage_in_tail,
    usage_of,
)
from proxy.pricing import PriceTable
from proxy.store.limits_local import LocalLimits
from proxy.testing import make_context
from proxy.tokens import count_text
from proxy.upstream.forward import request_headers, response_headers

PRICES = PriceTable()


def read(content_type: str, body: bytes, piece: int = 4096) -> tuple[object, Usage | None]:
    reader = UsageReader(content_type)
    for at in range(0, len(body), piece):
        reader.feed(body[at:at + piece])
    document = reader.document()
    return document, reader.usage(document)


def test_usage_is_read_in_both_spellings() -> None:
    assert usage_of({"prompt_tokens": 8, "total_tokens": 8}) == Usage(8, 0)
    assert usage_of({"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}) == Usage(5, 7)
    assert usage_of({"type": "duration", "seconds": 3}) is None
    assert usage_of(None) is None


def test_a_json_answer_is_parsed_whole() -> None:
    body = orjson.dumps({"object": "list", "data": [], "usage": {"prompt_tokens": 3}})
    document, usage = read("application/json; charset=utf-8", body, piece=7)
    assert document == orjson.loads(body) and usage == Usage(3, 0)


def test_usage_of_an_answer_too_big_to_parse_is_found_at_its_end() -> None:
    filler = "x" * (INSPECT_BYTES + 10)
    body = orjson.dumps({"data": [filler], "model": "m", "usage": {"prompt_tokens": 9}})
    document, usage = read("application/json", body, piece=1 << 20)
    assert document is None and usage == Usage(9, 0)


def test_usage_of_a_stream_is_its_last_usage_member() -> None:
    events = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in (
        {"choices": [{"text": "a"}], "usage": None},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}))
    assert read("text/event-stream", events + b"data: [DONE]\n\n")[1] == Usage(4, 2)
    assert usage_in_tail(b'{"usage": {"prompt_tokens": 1') is None  # cut: no usage


def test_audio_and_files_are_not_looked_at() -> None:
    reader = UsageReader("audio/mpeg")
    reader.feed(b'"usage": {"prompt_tokens": 5}')
    assert not reader.active and reader.usage(None) is None


async def test_a_finished_batch_is_billed_once_at_the_batch_price() -> None:
    ctx = make_context({})
    limits = LocalLimits()
    batch = {"id": "batch_1", "object": "batch", "status": "completed", "model": "gpt-4o"}
    usage = Usage(1000, 500)
    first = await bill_for(ctx, batch, usage, PRICES, limits)
    assert first is not None and first.batch
    assert first.cost_usd == pytest.approx(PRICES.cost("gpt-4o", 1000, 500) / 2)
    assert await bill_for(ctx, batch, usage, PRICES, limits) is None
    running = {**batch, "id": "batch_2", "status": "in_progress"}
    assert await bill_for(ctx, running, usage, PRICES, limits) is None


def test_hop_by_hop_and_private_headers_stay_behind() -> None:
    sent = request_headers({"Connection": "keep-alive, X-Trace", "X-Trace": "1",
                            "Keep-Alive": "timeout=5", "Authorization": "Bearer sk-proxy",
                            "Content-Type": "multipart/form-data; boundary=b",
                            "Content-Length": "10", "x-proxy-cache": "no-store",
                            "Accept-Encoding": "gzip", "OpenAI-Beta": "assistants=v2"},
                           streamed=True)
    assert dict(sent) == {"Content-Type": "multipart/form-data; boundary=b",
                          "Content-Length": "10", "OpenAI-Beta": "assistants=v2",
                          "Accept-Encoding": "identity"}
    assert "Content-Length" not in request_headers({"Content-Length": "10"}, streamed=False)
    back = response_headers({"Transfer-Encoding": "chunked", "Content-Type": "audio/mpeg",
                             "openai-organization": "org-x", "x-request-id": "up",
                             "openai-processing-ms": "5"})
    assert dict(back) == {"Content-Type": "audio/mpeg", "openai-processing-ms": "5"}


def test_embedding_input_tokens_counts_strings_and_token_arrays() -> None:
    model = "text-embedding-3-small"
    assert embedding_input_tokens({"model": model, "input": "hello world"}) == count_text(
        "hello world", model)
    assert embedding_input_tokens({"model": model, "input": ["a b", "c"]}) == (
        count_text("a b", model) + count_text("c", model))
    assert embedding_input_tokens({"model": model, "input": [1, 2, 3]}) == 3
    assert embedding_input_tokens({"model": model, "input": [[1, 2], [3]]}) == 3
    assert embedding_input_tokens({"model": model}) == 0
