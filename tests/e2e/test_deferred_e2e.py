"""`x-proxy-defer: batch` with the official openai SDK: off unless the key's policy enables
it; a free answer at once, otherwise 202 and a `proxy.deferred` id whose batch, submitted
in a window, gives the completion; the queue survives a restart and is per key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.batches.window import DEFERRED_QUEUE
from proxy.testing import LiveProxy

RULES = """pipeline = ["admission", "patterns", "exact_cache", "route", "tools", "budget"]
[[patterns.rules]]
name = "thanks"
phrases = ["thanks", "thank you"]
replies = ["Anytime!"]
"""
MODEL = "gpt-4o-mini"
DEFER = {"x-proxy-defer": "batch"}
CONFIG = {"keys": {"alice": {"defer_batch": True}}, "batches": {"window_seconds": 3600}}


def chat(live: LiveProxy, question: str, key: str = "alice") -> Any:
    """A deferred chat completion: the raw response."""
    return live.client(key).with_raw_response.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], extra_headers=DEFER)


def deferred(live: LiveProxy, deferred_id: str, key: str = "alice") -> Any:
    """GET /v1/proxy/deferred/{id}."""
    return live.client(key).get(f"/proxy/deferred/{deferred_id}", cast_to=object)


def flush(live: LiveProxy) -> int:
    """Submit the queued requests now, as the next window would."""
    return live.run(live.app[DEFERRED_QUEUE].flush())


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    with LiveProxy(tmp_path, rules=RULES, config=CONFIG) as running:
        yield running


def test_a_free_answer_comes_at_once(live: LiveProxy) -> None:
    raw = chat(live, "Thanks!")
    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content == "Anytime!"
    assert flush(live) == 0 and not live.fake.batches


def test_a_queued_request_is_answered_once_its_batch_finished(live: LiveProxy) -> None:
    raw = chat(live, "Name a tree.")
    assert raw.status_code == 202
    queued = raw.http_response.json()
    assert queued["id"].startswith("deferred_") and queued["object"] == "proxy.deferred"
    assert (queued["status"], queued["batch_id"]) == ("queued", None)
    assert deferred(live, queued["id"])["status"] == "queued"
    assert live.fake.calls("POST", "/v1/chat/completions") == 0
    assert flush(live) == 1
    done = deferred(live, queued["id"])
    assert done["status"] == "completed" and done["batch_id"] is not None
    completion = done["response"]["body"]
    assert completion["object"] == "chat.completion" and completion["model"] == MODEL
    assert live.fake.calls("POST", "/v1/chat/completions") == 0  # it went as a batch
    billed = [r for r in live.ledger_rows() if r["cost_usd"] > 0]
    assert len(billed) == 1  # at the batch price, once
    deferred(live, queued["id"])
    assert len([r for r in live.ledger_rows() if r["cost_usd"] > 0]) == 1


def test_one_batch_per_key_and_window(live: LiveProxy) -> None:
    ids = [chat(live, q).http_response.json()["id"] for q in ("Name a tree.", "Name a bird.")]
    assert flush(live) == 1 and flush(live) == 0
    (batch,) = live.fake.batches.values()
    assert batch["request_counts"]["total"] == 2
    assert {deferred(live, i)["batch_id"] for i in ids} != {None}


def test_a_responses_request_is_deferred_too(live: LiveProxy) -> None:
    raw = live.client().with_raw_response.responses.create(model=MODEL, input="Name a tree.",
                                                           extra_headers=DEFER)
    assert raw.status_code == 202
    queued = raw.http_response.json()
    flush(live)
    done = deferred(live, queued["id"])
    assert done["status"] == "completed" and done["endpoint"] == "/v1/responses"
    assert done["response"]["body"]["object"] == "response"
    answer = live.client().with_raw_response.responses.create(model=MODEL, input="Thanks!",
                                                              extra_headers=DEFER)
    assert answer.status_code == 200 and answer.parse().output_text == "Anytime!"


def test_another_key_never_sees_the_id(live: LiveProxy) -> None:
    queued = chat(live, "Name a tree.").http_response.json()
    with pytest.raises(openai.NotFoundError):
        deferred(live, queued["id"], key="bob")


@pytest.mark.parametrize(("key", "headers", "extra"), [
    ("bob", DEFER, {}),  # not enabled for the key
    ("alice", {"x-proxy-defer": "later"}, {}),
    ("alice", DEFER, {"stream": True}),
])
def test_deferral_refused(live: LiveProxy, key: str, headers: dict[str, str],
                          extra: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        live.client(key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name a tree."}],
            extra_headers=headers, **extra)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "defer_not_supported"
    assert live.fake.calls("POST", "/v1/chat/completions") == 0


def test_the_queue_survives_a_restart(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=RULES, config=CONFIG) as first:
        queued = chat(first, "Name a tree.").http_response.json()
    with LiveProxy(tmp_path, rules=RULES, config=CONFIG) as second:
        assert deferred(second, queued["id"])["status"] == "queued"
        assert flush(second) == 1
        assert deferred(second, queued["id"])["status"] == "completed"


def test_the_window_submits_on_its_own(tmp_path: Path) -> None:
    config = {**CONFIG, "batches": {"window_seconds": 0.2}}
    with LiveProxy(tmp_path, rules=RULES, config=config) as live:
        queued = chat(live, "Name a tree.").http_response.json()
        deadline = time.monotonic() + 30
        while deferred(live, queued["id"])["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert deferred(live, queued["id"])["status"] == "completed"
