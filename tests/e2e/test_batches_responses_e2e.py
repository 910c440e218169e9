"""Batches over /v1/responses through the pipeline, with the official openai SDK: lines the
free stages answer come back as Response objects, the rest goes upstream unchanged, the
output is merged in input order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from proxy.pipeline.stages.exact_cache import exact_entries
from proxy.testing import LiveProxy

RULES = """pipeline = ["admission", "patterns", "exact_cache", "route", "budget"]
[exact_cache]
share = "all"
[[patterns.rules]]
name = "thanks"
phrases = ["thanks", "thank you"]
replies = ["Anytime!"]
[[route.rules]]
name = "depth"
model = "gpt-4o"
applies_to = ["gpt-4o-mini"]
when = { keywords = ["analyze"] }
"""
MODEL = "gpt-4o-mini"


def line(custom_id: str, **body: Any) -> bytes:
    """One Responses input line."""
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/responses",
                         "body": {"model": MODEL, **body}})


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    with LiveProxy(tmp_path, rules=RULES) as running:
        yield running


def submit(live: LiveProxy, lines: list[bytes]) -> Any:
    """Upload `lines` and create a Responses batch over them."""
    client = live.client()
    upload = client.files.create(file=("in.jsonl", b"\n".join(lines)), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/responses",
                                 completion_window="24h")


def test_free_answers_are_responses_and_the_rest_goes_upstream_unchanged(
        live: LiveProxy) -> None:
    asked = live.client().responses.create(model=MODEL, input="Name a fruit.")
    live.run(exact_entries(live.resources).drain())
    rest = [line("tree", input="Name a tree."),
            line("deep", input="Analyze my sleep.", instructions="Be brief."),
            line("search", input="News today?", tools=[{"type": "web_search"}])]
    batch = submit(live, [line("thanks", input="Thanks!"), rest[0],
                          line("fruit", input=[{"role": "user", "content": "Name a fruit."}]),
                          *rest[1:]])
    (upstream,) = live.fake.batches.values()
    assert upstream["endpoint"] == "/v1/responses"
    assert live.fake.files[upstream["input_file_id"]][1].splitlines() == rest
    done = live.client().batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (5, 5)
    assert done.output_file_id is not None
    answers = [orjson.loads(raw) for raw in
               live.client().files.content(done.output_file_id).text.splitlines()]
    assert [a["custom_id"] for a in answers] == ["thanks", "tree", "fruit", "deep", "search"]
    bodies = [a["response"]["body"] for a in answers]
    assert all(b["object"] == "response" and b["status"] == "completed" for b in bodies)
    text = [b["output"][0]["content"][0]["text"] for b in bodies]
    assert text[0] == "Anytime!" and text[2] == asked.output_text
    assert bodies[3]["model"] == MODEL  # sent as written: not routed
    assert live.fake.calls("POST", "/v1/chat/completions") == 1  # the first ask only


def test_free_answers_echo_the_lines_request(live: LiveProxy) -> None:
    batch = submit(live, [line("a", input="Thank you", instructions="Be kind.",
                               metadata={"k": "v"})])
    assert batch.status == "completed" and not live.fake.batches
    assert batch.output_file_id is not None
    (answer,) = [orjson.loads(raw) for raw in
                 live.client().files.content(batch.output_file_id).text.splitlines()]
    body = answer["response"]["body"]
    assert (body["model"], body["instructions"], body["metadata"]) == (
        MODEL, "Be kind.", {"k": "v"})
    rows = [r for r in live.ledger_rows() if r["source"] == "batch"]
    assert [r["stage"] for r in rows] == ["pattern"]


def test_a_bad_responses_line_is_refused(live: LiveProxy) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        submit(live, [line("a", input=[{"role": "wizard", "content": "hi"}])])
    assert isinstance(refused.value.body, dict)
    assert "Line 1 of the input file" in refused.value.body["message"]
    assert live.fake.calls("POST", "/v1/batches") == 0
