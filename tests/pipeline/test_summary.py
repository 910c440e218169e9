"""Summarizer: made once per prefix, shared by concurrent requests, rolled up, stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiosqlite
import pytest

from proxy.errors import UpstreamError
from proxy.pipeline.summary import (
    Summarizer,
    SummaryRules,
    summary_key,
    summary_message,
    transcript,
)
from proxy.store.kv import SqliteKV, StoreError

NS = "summary:test"


class GatedUpstream:
    """An upstream stand-in whose answers wait for `gate`; records every body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = False

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        await self.gate.wait()
        if self.failing:
            raise UpstreamError("upstream answered 500")
        return {"choices": [{"message": {"content": f"summary #{len(self.bodies)}"}}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 8}}


def turns(n: int) -> list[dict[str, Any]]:
    """n alternating user/assistant messages."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"}
            for i in range(n)]


class CountingKV(SqliteKV):
    """SqliteKV that counts finished reads (to know when waiters are past them) and can
    be made to fail like a store whose backend is down."""

    reads = 0
    down = False

    async def get(self, ns: str, key: str) -> bytes | None:
        if self.down:
            raise StoreError("redis store failed: ConnectionError")
        value = await super().get(ns, key)
        self.reads += 1
        return value

    async def put(self, ns: str, key: str, value: bytes, ttl: float | None = None) -> None:
        if self.down:
            raise StoreError("redis store failed: ConnectionError")
        await super().put(ns, key, value, ttl)


@pytest.fixture
async def kv() -> AsyncIterator[CountingKV]:
    db = await aiosqlite.connect(":memory:")
    store = CountingKV(db)
    await store.start()
    yield store
    await db.close()


@pytest.fixture
def upstream() -> GatedUpstream:
    return GatedUpstream()


@pytest.fixture
def summarizer(upstream: GatedUpstream, kv: SqliteKV) -> Summarizer:
    return Summarizer(SummaryRules(), upstream, kv, {})  # type: ignore[arg-type]


async def test_first_request_makes_and_stores_the_summary(summarizer: Summarizer,
                                                          upstream: GatedUpstream) -> None:
    made = await summarizer.summarize(NS, turns(4))
    again = await summarizer.summarize(NS, turns(4))
    assert (made.source, made.text, made.usage.total_tokens) == ("made", "summary #1", 48)
    assert (again.source, again.text, again.usage) == ("stored", "summary #1", None)
    assert len(upstream.bodies) == 1


async def test_summary_request_uses_model_prompt_and_length(summarizer: Summarizer,
                                                            upstream: GatedUpstream) -> None:
    await summarizer.summarize(NS, turns(2))
    body = upstream.bodies[0]
    assert body["model"] == "gpt-4o-mini" and body["max_completion_tokens"] == 200
    assert body["messages"][0]["content"] == SummaryRules().prompt
    assert body["messages"][1]["content"] == "user: turn 0\nassistant: turn 1"


async def test_concurrent_requests_share_one_summary_call(
        summarizer: Summarizer, upstream: GatedUpstream, kv: CountingKV) -> None:
    upstream.gate.clear()
    waiting = [asyncio.create_task(summarizer.summarize(NS, turns(4))) for _ in range(3)]
    for _ in range(5000):  # until all three have read the store and one call is out
        if kv.reads >= 3 and upstream.bodies:
            break
        await asyncio.sleep(0.001)
    upstream.gate.set()
    results = await asyncio.gather(*waiting)
    assert len(upstream.bodies) == 1
    assert sorted(r.source for r in results) == ["joined", "joined", "made"]
    assert {r.text for r in results} == {"summary #1"}


async def test_longer_prefix_rolls_up_from_the_stored_shorter_one(summarizer: Summarizer,
                                                                  upstream: GatedUpstream) -> None:
    await summarizer.summarize(NS, turns(4), step=4)
    rolled = await summarizer.summarize(NS, turns(8), step=4)
    assert rolled.text == "summary #2"
    assert upstream.bodies[1]["messages"][1]["content"] == (
        "Summary so far: summary #1\n\nConversation since then:\n"
        "user: turn 4\nassistant: turn 5\nuser: turn 6\nassistant: turn 7")


async def test_failure_is_reported_not_stored_and_retried_next_time(
        summarizer: Summarizer, upstream: GatedUpstream) -> None:
    upstream.failing = True
    failed = await summarizer.summarize(NS, turns(4))
    upstream.failing = False
    retried = await summarizer.summarize(NS, turns(4))
    assert (failed.source, failed.text, failed.error) == ("failed", None,
                                                          "upstream answered 500")
    assert retried.source == "made" and len(upstream.bodies) == 2


async def test_dry_run_reads_the_store_but_never_calls_upstream(summarizer: Summarizer,
                                                                upstream: GatedUpstream) -> None:
    missing = await summarizer.summarize(NS, turns(4), dry_run=True)
    await summarizer.summarize(NS, turns(4))
    stored = await summarizer.summarize(NS, turns(4), dry_run=True)
    assert (missing.source, missing.text) == ("missing", None)
    assert (stored.source, stored.text) == ("stored", "summary #1")
    assert len(upstream.bodies) == 1


async def test_store_down_reports_a_failure_without_calling_upstream(
        summarizer: Summarizer, upstream: GatedUpstream, kv: CountingKV) -> None:
    kv.down = True
    result = await summarizer.summarize(NS, turns(4))
    assert (result.source, result.error) == ("failed", "redis store failed: ConnectionError")
    assert upstream.bodies == []


async def test_summary_made_while_the_store_breaks_is_still_used(
        summarizer: Summarizer, upstream: GatedUpstream, kv: CountingKV) -> None:
    upstream.gate.clear()
    waiting = asyncio.create_task(summarizer.summarize(NS, turns(4)))
    for _ in range(5000):  # until the call is out
        if upstream.bodies:
            break
        await asyncio.sleep(0.001)
    kv.down = True
    upstream.gate.set()
    assert (await waiting).text == "summary #1"


async def test_summaries_are_kept_per_namespace(summarizer: Summarizer,
                                                upstream: GatedUpstream) -> None:
    await summarizer.summarize("summary:alice", turns(4))
    other = await summarizer.summarize("summary:bob", turns(4))
    assert other.source == "made" and len(upstream.bodies) == 2


@pytest.mark.parametrize(("a", "b", "same"), [
    (SummaryRules(), SummaryRules(), True),
    (SummaryRules(), SummaryRules(model="gpt-4.1-mini"), False),
    (SummaryRules(), SummaryRules(prompt="Summarize."), False),
    (SummaryRules(), SummaryRules(max_tokens=100), False),
])
def test_summary_key_depends_on_what_shapes_the_summary(a: SummaryRules, b: SummaryRules,
                                                        same: bool) -> None:
    assert (summary_key(turns(4), a) == summary_key(turns(4), b)) is same


def test_summary_key_ignores_json_key_order() -> None:
    swapped = [{"content": m["content"], "role": m["role"]} for m in turns(4)]
    assert summary_key(swapped, SummaryRules()) == summary_key(turns(4), SummaryRules())


def test_transcript_shows_tool_calls_and_results() -> None:
    call = {"id": "c1", "type": "function",
            "function": {"name": "log_habit", "arguments": '{"habit": "run"}'}}
    text = transcript([{"role": "assistant", "content": None, "tool_calls": [call]},
                       {"role": "tool", "tool_call_id": "c1", "content": "logged"}])
    assert text == 'assistant: [called log_habit({"habit": "run"})]\ntool: logged'


def test_summary_message_is_a_system_message() -> None:
    assert summary_message("x") == {"role": "system",
                                    "content": "Summary of the earlier conversation: x"}
