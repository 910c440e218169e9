"""Runs go through the pipeline: stages see thread metadata, can answer, and keep a summary.

This module doubles as a stage module (`parse_rules` / `build`) registered under
the name "thread_probe" for these tests.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.config import Section
from proxy.pipeline import registry
from proxy.pipeline.core import Context, Next, Reply, Usage
from proxy.pipeline.replies import completion_to_events, make_completion
from proxy.testing import LiveProxy
from proxy.threads import runtime as threads_runtime
from proxy.upstream.sse import from_list

SEEN: list[dict[str, Any]] = []


def parse_rules(section: Section) -> dict[str, Any]:
    """Rules: `answer` (a canned reply for every request, or none)."""
    return {"answer": section.str("answer")}


class ThreadProbe:
    """Records what a thread run tells the stages, leaves a summary, maybe answers."""

    name = "thread_probe"

    def __init__(self, answer: str | None) -> None:
        self.answer = answer

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        SEEN.append({"source": ctx.source, "thread": dict(ctx.thread or {}),
                     "summary": ctx.prior_summary})
        ctx.new_summary = {"key": "k", "text": f"summary of {len(ctx.messages)} messages"}
        if self.answer is None:
            return await call_next(ctx)
        completion = make_completion(ctx.requested_model, self.answer)
        reply = Reply(stage=self.name, model=ctx.requested_model, saved_usage=Usage(10, 5))
        if ctx.stream:
            reply.chunks = from_list(completion_to_events(completion, include_usage=True))
        else:
            reply.body = orjson.dumps(completion)
        return reply


def build(rules: dict[str, Any], resources: Any) -> ThreadProbe:
    """The probe stage."""
    return ThreadProbe(rules["answer"])


@pytest.fixture(autouse=True)
def probe_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.STAGE_MODULES, "thread_probe", __name__)
    SEEN.clear()


def test_stages_see_thread_metadata_and_the_summary_is_kept(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules='pipeline = ["thread_probe"]\n') as live:
        client = live.client()
        assistant = client.beta.assistants.create(model="gpt-4o", instructions="Hi.")
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "one"}])
        first = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                         assistant_id=assistant.id)
        client.beta.threads.messages.create(thread.id, role="user", content="two")
        client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
        public_thread = client.beta.threads.retrieve(thread.id)
    assert [s["source"] for s in SEEN] == ["thread", "thread"]
    assert SEEN[0]["thread"] == {"thread_id": thread.id, "run_id": first.id,
                                 "assistant_id": assistant.id, "thread_messages": 1,
                                 "user_turn": 1, "sent_messages": 1}
    assert SEEN[1]["thread"]["user_turn"] == 2
    assert SEEN[0]["summary"] is None
    assert SEEN[1]["summary"] == {"key": "k", "text": "summary of 2 messages"}  # from run 1
    assert "_trim_summary" not in public_thread.model_dump()


@pytest.mark.parametrize("stream", [False, True])
def test_a_stage_answer_becomes_the_run_message(tmp_path: Path, stream: bool) -> None:
    rules = 'pipeline = ["thread_probe"]\n[thread_probe]\nanswer = "canned reply"\n'
    with LiveProxy(tmp_path, rules=rules) as live:
        client = live.client()
        assistant = client.beta.assistants.create(model="gpt-4o")
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
        if stream:
            with client.beta.threads.runs.stream(thread_id=thread.id,
                                                 assistant_id=assistant.id) as events:
                events.until_done()
                run = events.get_final_run()
        else:
            run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                           assistant_id=assistant.id)
        answer = client.beta.threads.messages.list(thread.id, limit=1).data[0]
        rows = live.ledger_rows()
    assert run.status == "completed"
    assert answer.content[0].text.value == "canned reply"
    assert len(live.fake.received) == 0
    assert [(r["stage"], r["source"]) for r in rows] == [("thread_probe", "thread")]


def test_shutdown_fails_runs_still_executing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads_runtime, "SHUTDOWN_GRACE_SECONDS", 0.05)
    with LiveProxy(tmp_path) as live:
        live.fake.ttft = 1.0
        client = live.client()
        assistant = client.beta.assistants.create(model="gpt-4o")
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
        run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    with sqlite3.connect(tmp_path / "proxy.db") as db:
        (body,) = db.execute("SELECT body FROM thread_objects WHERE id = ?",
                             (run.id,)).fetchone()
    stored = orjson.loads(body)
    assert stored["status"] == "failed"
    assert "shut down" in stored["last_error"]["message"]


def test_run_model_is_the_model_that_answered(
        tmp_path: Path) -> None:
    rules = ('pipeline = ["route"]\n[route]\naliases = { auto = "gpt-4o-mini" }\n'
             '[[route.rules]]\nname = "deep"\nmodel = "gpt-4o"\n'
             'when = { keywords = ["analyze"] }\n')
    with LiveProxy(tmp_path, rules=rules) as live:
        client = live.client()
        assistant = client.beta.assistants.create(model="auto", instructions="Coach.")
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
        first = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                         assistant_id=assistant.id)
        client.beta.threads.messages.create(thread.id, role="user", content="analyze my week")
        second = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                          assistant_id=assistant.id)
        assert (first.status, second.status) == ("completed", "completed")
        assert (first.model, second.model) == ("gpt-4o-mini", "gpt-4o")
        assert [b["model"] for b in live.fake.received] == ["gpt-4o-mini", "gpt-4o"]
        assert client.beta.threads.runs.retrieve(first.id, thread_id=thread.id).model == \
            "gpt-4o-mini"
        assert client.beta.assistants.retrieve(assistant.id).model == "auto"
