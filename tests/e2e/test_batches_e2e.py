"""Batches over chat completions through the pipeline, with the official openai SDK: the
lines the proxy can answer never reach the upstream, the output has every line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from proxy.pipeline.stages.exact_cache import exact_entries
from proxy.pricing import PriceTable
from proxy.testing import LiveProxy

RULES = """pipeline = ["admission", "patterns", "exact_cache", "budget"]
[exact_cache]
share = "all"
[[patterns.rules]]
name = "thanks"
phrases = ["thanks", "thank you"]
replies = ["Anytime!"]
"""
MODEL = "gpt-4o-mini"
PRICES = PriceTable()


def line(custom_id: str, question: str, **extra: Any) -> dict[str, Any]:
    """One batch input line asking `question`."""
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": question}]},
            **extra}


def ask(live: LiveProxy, question: str, key: str = "alice") -> str:
    """A chat completion, its answer stored in the exact cache before this returns."""
    completion = live.client(key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}])
    live.run(exact_entries(live.resources).drain())
    return str(completion.choices[0].message.content)


def submit(live: LiveProxy, lines: list[dict[str, Any]] | bytes, key: str = "alice") -> Any:
    """Upload `lines` and create a chat-completions batch over them."""
    client = live.client(key)
    data = lines if isinstance(lines, bytes) else b"\n".join(map(orjson.dumps, lines))
    upload = client.files.create(file=("in.jsonl", data), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")


def output(live: LiveProxy, file_id: str, key: str = "alice") -> list[dict[str, Any]]:
    """The lines of an output file."""
    return [orjson.loads(raw) for raw in
            live.client(key).files.content(file_id).text.splitlines()]


def content(answer: dict[str, Any]) -> str:
    """The assistant text of one output line."""
    return str(answer["response"]["body"]["choices"][0]["message"]["content"])


def upstream_custom_ids(live: LiveProxy) -> list[str]:
    """The custom_ids of every input file the upstream ran a batch over."""
    ids = []
    for batch in live.fake.batches.values():
        data = live.fake.files[batch["input_file_id"]][1]
        ids += [orjson.loads(raw)["custom_id"] for raw in data.splitlines()]
    return ids


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    with LiveProxy(tmp_path, rules=RULES) as running:
        yield running


def test_cached_lines_are_answered_by_the_proxy_and_merged_in_input_order(
        live: LiveProxy) -> None:
    cached = ask(live, "Name a fruit.")
    lines = [line("color", "Name a color."), line("fruit", "Name a fruit."),
             line("thanks", "Thanks!"), line("tree", "Name a tree.")]
    batch = submit(live, lines)
    done = live.client().batches.retrieve(batch.id)
    assert done.id == batch.id and done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (4, 4, 0)
    assert done.output_file_id is not None
    answers = output(live, done.output_file_id)
    assert [a["custom_id"] for a in answers] == ["color", "fruit", "thanks", "tree"]
    assert all(a["response"]["status_code"] == 200 and a["error"] is None for a in answers)
    assert content(answers[1]) == cached and content(answers[2]) == "Anytime!"
    assert upstream_custom_ids(live) == ["color", "tree"]
    assert live.fake.calls("POST", "/v1/chat/completions") == 1  # the first ask only


def test_ledger_rows_name_the_stage_and_the_saving_at_the_batch_price(live: LiveProxy) -> None:
    ask(live, "Name a fruit.")
    submit(live, [line("fruit", "Name a fruit."), line("thanks", "Thanks!"),
                  line("tree", "Name a tree.")])
    rows = {r["stage"]: r for r in live.ledger_rows() if r["source"] == "batch"}
    assert set(rows) == {"exact_cache", "pattern"}
    first = next(r for r in live.ledger_rows() if r["source"] == "chat")
    assert rows["exact_cache"]["cost_usd"] == rows["pattern"]["cost_usd"] == 0.0
    expected = PRICES.batch_cost(MODEL, first["prompt_tokens"], first["completion_tokens"])
    assert rows["exact_cache"]["baseline_usd"] == pytest.approx(expected) and expected > 0


def test_a_batch_answered_whole_completes_without_an_upstream_batch(live: LiveProxy) -> None:
    ask(live, "Name a fruit.")
    batch = submit(live, [line("a", "Thanks!"), line("b", "Name a fruit."),
                          line("c", "thank you")])
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.completed == 3 and batch.usage is not None
    assert live.fake.calls("POST", "/v1/batches") == 0 and not live.fake.batches
    assert batch.output_file_id is not None
    assert [a["custom_id"] for a in output(live, batch.output_file_id)] == ["a", "b", "c"]
    meta = live.client().files.retrieve(batch.output_file_id)
    assert meta.purpose == "batch_output" and meta.bytes > 0
    assert live.client().batches.retrieve(batch.id).status == "completed"


def test_another_key_sees_neither_the_batch_nor_its_output(live: LiveProxy) -> None:
    batch = submit(live, [line("a", "Thanks!"), line("b", "Name a tree.")])
    done = live.client().batches.retrieve(batch.id)
    assert done.output_file_id is not None
    bob = live.client("bob")
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(done.output_file_id)


def test_the_upstream_batch_is_billed_once_at_the_batch_price(live: LiveProxy) -> None:
    batch = submit(live, [line("a", "Thanks!"), line("b", "Name a tree.")])
    client = live.client()
    done, _ = client.batches.retrieve(batch.id), client.batches.retrieve(batch.id)
    assert done.usage is not None
    billed = [r for r in live.ledger_rows() if r["cost_usd"] > 0]
    assert len(billed) == 1 and billed[0]["source"] == "passthrough"
    assert billed[0]["cost_usd"] == pytest.approx(
        PRICES.batch_cost(MODEL, done.usage.input_tokens, done.usage.output_tokens))


def test_a_batch_for_another_endpoint_passes_through(live: LiveProxy) -> None:
    client = live.client()
    upload = client.files.create(file=("in.jsonl", orjson.dumps(line("a", "Thanks!"))),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings",
                                  completion_window="24h")
    assert batch.id in live.fake.batches  # the upstream's own batch, not taken in


BAD_LINES = [
    (b'{"custom_id": "a", "method": "POST"\n', "Line 1 of the input file is not valid JSON"),
    (orjson.dumps(line("a", "hi", url="/v1/embeddings")), "has 'url' '/v1/embeddings'"),
    (orjson.dumps(line("a", "hi")) + b"\n" + orjson.dumps(line("a", "ho")),
     "Line 2 of the input file repeats custom_id 'a'"),
    (orjson.dumps({**line("a", "hi"), "body": {"model": MODEL}}), "Line 1 of the input file:"),
    (b"\n\n", "The input file has no requests."),
]


@pytest.mark.parametrize(("data", "message"), BAD_LINES)
def test_a_bad_input_file_is_refused_with_an_openai_error(live: LiveProxy, data: bytes,
                                                          message: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        submit(live, data)
    error = refused.value.body
    assert isinstance(error, dict) and message in error["message"]
    assert error["param"] == "input_file_id"
    assert live.fake.calls("POST", "/v1/batches") == 0


def test_an_unknown_input_file_gets_the_upstreams_error(live: LiveProxy) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        live.client().batches.create(input_file_id="file-nope",
                                     endpoint="/v1/chat/completions", completion_window="24h")
    assert isinstance(missing.value.body, dict)
    assert "file-nope" in missing.value.body["message"]


@pytest.mark.parametrize("path", ["/chat/completions", "/responses"])
def test_deferring_a_request_is_refused_clearly(live: LiveProxy, path: str) -> None:
    client = live.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.post(path, cast_to=object, body={"model": MODEL, "input": "hi", "messages": [
            {"role": "user", "content": "hi"}]}, options={"headers": {"x-proxy-defer": "batch"}})
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "defer_not_supported"
    assert live.fake.calls("POST", "/v1" + path) == 0
