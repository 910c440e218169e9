"""Batch lines sent upstream are routed and stripped like chat requests, with the official
openai SDK: one upstream batch per routed model, counts, output, usage and cancel across
them, unchanged lines byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.pricing import PriceTable
from proxy.testing import LiveProxy

RULES = """pipeline = ["admission", "patterns", "route", "tools", "budget"]
[[patterns.rules]]
name = "thanks"
phrases = ["thanks", "thank you"]
replies = ["Anytime!"]
[[route.rules]]
name = "depth"
model = "gpt-4o"
why = "asks for analysis"
applies_to = ["gpt-4o-mini"]
when = { keywords = ["analyze"] }
"""
MODEL = "gpt-4o-mini"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def line(custom_id: str, question: str, **body: Any) -> bytes:
    """One input line asking `question`, written with spaces orjson would not write."""
    return orjson.dumps({"custom_id": custom_id, "method": "POST",
                         "url": "/v1/chat/completions",
                         "body": {"model": MODEL, "messages": [
                             {"role": "user", "content": question}], **body}},
                        option=orjson.OPT_INDENT_2).replace(b"\n", b" ")


def submit(live: LiveProxy, lines: list[bytes]) -> Any:
    """Upload `lines` and create a chat-completions batch over them."""
    client = live.client()
    upload = client.files.create(file=("in.jsonl", b"\n".join(lines)), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")


def upstream_inputs(live: LiveProxy) -> dict[str, list[bytes]]:
    """The lines of every upstream batch's input file, by the batch's model."""
    found = {}
    for batch in live.fake.batches.values():
        found[batch["model"]] = live.fake.files[batch["input_file_id"]][1].splitlines()
    return found


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    with LiveProxy(tmp_path, rules=RULES) as running:
        yield running


def test_lines_go_to_one_upstream_batch_per_routed_model(live: LiveProxy) -> None:
    plain, deep = line("plain", "Name a tree."), line("deep", "Analyze my sleep habits.")
    batch = submit(live, [line("thanks", "Thanks!"), deep, plain, line("deep2", "Analyze it.")])
    groups = upstream_inputs(live)
    assert sorted(groups) == ["gpt-4o", MODEL] and len(live.fake.batches) == 2
    assert groups[MODEL] == [plain]  # unchanged: byte for byte
    routed = [orjson.loads(raw) for raw in groups["gpt-4o"]]
    assert [(r["custom_id"], r["body"]["model"]) for r in routed] == [
        ("deep", "gpt-4o"), ("deep2", "gpt-4o")]
    assert routed[0]["body"]["messages"] == orjson.loads(deep)["body"]["messages"]
    done = live.client().batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (4, 4)
    assert done.output_file_id is not None
    answers = [orjson.loads(raw) for raw in
               live.client().files.content(done.output_file_id).text.splitlines()]
    assert [a["custom_id"] for a in answers] == ["thanks", "deep", "plain", "deep2"]
    models = [a["response"]["body"]["model"] for a in answers[1:]]
    assert models == ["gpt-4o", MODEL, "gpt-4o"]


def test_both_upstream_batches_are_billed_once_at_their_models_batch_price(
        live: LiveProxy) -> None:
    batch = submit(live, [line("a", "Analyze this."), line("b", "Name a tree.")])
    client = live.client()
    done, _ = client.batches.retrieve(batch.id), client.batches.retrieve(batch.id)
    parts = list(live.fake.batches.values())
    assert done.usage is not None
    assert done.usage.input_tokens == sum(p["usage"]["input_tokens"] for p in parts)
    prices = PriceTable()
    expected = sum(prices.batch_cost(p["model"], p["usage"]["input_tokens"],
                                     p["usage"]["output_tokens"]) for p in parts)
    billed = [r for r in live.ledger_rows() if r["cost_usd"] > 0]
    assert len(billed) == 1 and billed[0]["cost_usd"] == pytest.approx(expected)


def test_cancel_cancels_every_upstream_batch(live: LiveProxy) -> None:
    batch = submit(live, [line("a", "Analyze this."), line("b", "Name a tree.")])
    cancelled = live.client().batches.cancel(batch.id)
    assert cancelled.id == batch.id and cancelled.status == "cancelled"
    assert [b["status"] for b in live.fake.batches.values()] == ["cancelled", "cancelled"]


def test_unrelated_tools_are_stripped_from_the_line_sent_upstream(live: LiveProxy) -> None:
    submit(live, [line("a", "Name a tree.", tools=[WEATHER]),
                  line("b", "What is the weather in Paris?", tools=[WEATHER])])
    sent = {r["custom_id"]: r["body"] for r in map(orjson.loads, upstream_inputs(live)[MODEL])}
    assert "tools" not in sent["a"] and sent["b"]["tools"] == [WEATHER]


def test_the_batch_row_notes_how_lines_were_routed(live: LiveProxy) -> None:
    submit(live, [line("a", "Analyze this."), line("b", "Name a tree."),
                  line("c", "Thanks!")])
    trace = [d for r in live.ledger_rows() if r["source"] == "passthrough"
             for d in orjson.loads(r["trace"] or "[]")]
    grouped = next(d for d in trace if d["stage"] == "batch_route")
    assert grouped["models"] == {"gpt-4o": 1, MODEL: 1}
    assert (grouped["rerouted"], grouped["edited"]) == (1, 1)
