"""Semantic cache end to end through the official openai SDK, plus its rules and index."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from proxy.config import ConfigError, Section
from proxy.embed import Embedder
from proxy.pipeline.semantic.index import VectorIndex
from proxy.pipeline.semantic.pair_model import PairModel
from proxy.pipeline.semantic.standalone import ANALYZER, EMBEDDER
from proxy.pipeline.stages.semantic_cache import PAIR_MODEL, parse_rules
from proxy.testing import LiveProxy, admin_call
from proxy.upstream.fake import FakeUpstream

RULES = 'pipeline = ["semantic_cache"]\n[semantic_cache]\n'
# Both stand alone (the classifier admits them) and the pair model accepts the pair.
QUESTION = "Is running bad for your knees?"
PARAPHRASE = "Does running ruin your knees in the long run?"
CAFFEINE = "How much caffeine is in a cup of coffee?"


def ask(live: LiveProxy, text: str, key: str = "alice", history: list[Any] | None = None,
        headers: dict[str, str] | None = None) -> Any:
    """One non-streamed request; returns the raw response (headers + parsed body)."""
    return live.client(key).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[*(history or []), {"role": "user", "content": text}],
        extra_headers=headers or {})


def stream_text(live: LiveProxy, text: str, **kwargs: Any) -> str:
    """The text of a streamed answer."""
    chunks = live.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}], stream=True, **kwargs)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.fixture
def semantic(tmp_path: Path) -> Iterator[LiveProxy]:
    """A proxy with only the semantic cache in front of the fake upstream."""
    with LiveProxy(tmp_path, rules=RULES) as proxy:
        yield proxy


def test_paraphrase_is_answered_from_the_cache(semantic: LiveProxy) -> None:
    first = ask(semantic, QUESTION)
    second = ask(semantic, PARAPHRASE)
    assert len(semantic.fake.received) == 1
    assert second.headers["x-proxy-stage"] == "semantic_cache"
    assert second.headers["x-proxy-cache"].startswith("hit-semantic; similarity=0.")
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().model == "gpt-4o"


@pytest.mark.parametrize(("stored", "variant"), [
    (CAFFEINE, "How much caffeine is in 3 cups of coffee?"),
    (QUESTION, "Is running 3 times a week bad for your knees?"),
    (CAFFEINE, "How much caffeine is in a cup of coffee without milk?"),
    ("How can I increase the protein in my breakfast?",
     "How can I reduce the protein in my breakfast?"),
    (CAFFEINE, "How much caffeine is in a cup of green tea?"),
])
def test_changed_number_negation_opposite_or_thing_is_a_miss(semantic: LiveProxy, stored: str,
                                                             variant: str) -> None:
    ask(semantic, stored)
    reply = ask(semantic, variant)
    assert reply.headers["x-proxy-stage"] == "upstream"
    assert semantic.fake.received[-1]["messages"][-1]["content"] == variant


def test_another_keys_identical_question_is_a_miss(semantic: LiveProxy) -> None:
    ask(semantic, QUESTION, key="alice")
    reply = ask(semantic, QUESTION, key="bob")
    assert reply.headers["x-proxy-stage"] == "upstream"
    assert len(semantic.fake.received) == 2


def test_context_dependent_follow_up_is_never_served(semantic: LiveProxy) -> None:
    history = [{"role": "user", "content": QUESTION},
               {"role": "assistant", "content": "About 20 g."}]
    ask(semantic, "and what about a whole tub?", history=history)
    reply = ask(semantic, "and what about a whole tub?", key="alice", history=history)
    assert reply.headers["x-proxy-stage"] == "upstream"
    assert len(semantic.fake.received) == 2


def test_stream_hit_replays_a_stored_plain_answer(semantic: LiveProxy) -> None:
    first = ask(semantic, QUESTION).parse().choices[0].message.content
    assert stream_text(semantic, PARAPHRASE) == first
    assert len(semantic.fake.received) == 1


def test_streamed_answer_is_stored_and_replayed_as_json(semantic: LiveProxy) -> None:
    streamed = stream_text(semantic, QUESTION)
    reply = ask(semantic, PARAPHRASE)
    assert reply.headers["x-proxy-stage"] == "semantic_cache"
    assert reply.parse().choices[0].message.content == streamed
    assert reply.parse().usage.completion_tokens > 0
    assert len(semantic.fake.received) == 1


def test_stream_cut_midway_is_not_stored(semantic: LiveProxy) -> None:
    semantic.fake.fail("cut")
    with pytest.raises(Exception):
        stream_text(semantic, QUESTION)
    assert ask(semantic, PARAPHRASE).headers["x-proxy-stage"] == "upstream"


def test_stream_the_client_left_is_not_stored(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=RULES, fake=FakeUpstream(tokens_per_second=40)) as live:
        stream = live.client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": QUESTION}], stream=True)
        next(iter(stream))
        stream.close()
        [row] = live.wait_ledger_rows(1, status=499)  # read to its end, then recorded
        live.fake.tokens_per_second = 0
        assert ask(live, PARAPHRASE).headers["x-proxy-stage"] == "upstream"
        assert len(live.fake.received) == 2
    assert row["completion_tokens"] > 0


@pytest.mark.parametrize("directive", ["no-store", "no-cache, no-store", "No-Store"])
def test_no_store_neither_reads_nor_stores(semantic: LiveProxy, directive: str) -> None:
    ask(semantic, QUESTION, headers={"x-proxy-cache": directive})
    assert ask(semantic, PARAPHRASE).headers["x-proxy-stage"] == "upstream"
    assert len(semantic.fake.received) == 2


def test_answers_from_a_fallback_model_are_not_stored(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=RULES,
                   config={"fallbacks": {"gpt-4o": ["fake:gpt-4o-mini"]}}) as live:
        live.fake.fail("500", count=3, model="gpt-4o")
        assert ask(live, QUESTION).parse().model == "gpt-4o-mini"
        again = ask(live, PARAPHRASE)
    assert again.headers["x-proxy-stage"] == "upstream"
    assert again.parse().model == "gpt-4o"


def test_no_cache_skips_the_read_but_stores(semantic: LiveProxy) -> None:
    ask(semantic, QUESTION)
    skipped = ask(semantic, PARAPHRASE, headers={"x-proxy-cache": "no-cache"})
    assert skipped.headers["x-proxy-stage"] == "upstream"
    assert ask(semantic, PARAPHRASE).headers["x-proxy-stage"] == "semantic_cache"
    assert len(semantic.fake.received) == 2


def test_entries_survive_a_restart(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=RULES) as live:
        answer = ask(live, QUESTION).parse().choices[0].message.content
    with LiveProxy(tmp_path, rules=RULES) as live:
        reply = ask(live, PARAPHRASE)
        assert len(live.fake.received) == 0
    assert reply.parse().choices[0].message.content == answer


def test_least_recently_used_entry_is_evicted_beyond_max_entries(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=RULES + "max_entries = 2\n") as live:
        ask(live, QUESTION)
        ask(live, "how do I descale an electric kettle?")
        ask(live, "what is the boiling point of water at altitude?")
        assert ask(live, "how can I descale an electric kettle").headers[
            "x-proxy-stage"] == "semantic_cache"
        assert ask(live, PARAPHRASE).headers["x-proxy-stage"] == "upstream"


@pytest.mark.parametrize(("table", "message"), [
    ({"threshold": 1.5}, "threshold: a cosine similarity must be <= 1"),
    ({"candidates": 0}, "candidates: must be >= 1"),
    ({"treshold": 0.8}, "unknown field(s) ['treshold']"),
])
def test_bad_rules_are_refused_naming_the_field(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_rules(Section(table, "rules.toml", "semantic_cache"))
    assert message in str(err.value) and "[semantic_cache]" in str(err.value)


def test_vector_index_finds_nearest_and_forgets_removed_rows() -> None:
    index = VectorIndex(capacity=2)
    for key, axis in (("x", 0), ("y", 1), ("z", 2)):
        row = np.zeros(384, dtype=np.float32)
        row[axis] = 1.0
        index.add(key, row)
    query = np.zeros(384, dtype=np.float32)
    query[1] = 1.0
    assert index.search(query, 2)[0] == ("y", 1.0)
    index.remove("y")
    assert [key for key, _ in index.search(query, 3)] != [] and "y" not in dict(
        index.search(query, 3))
    assert len(index) == 2


def test_readiness_waits_for_the_embedding_model_and_the_fitted_models(
        semantic: LiveProxy) -> None:
    async def ready_status() -> int:
        async with aiohttp.ClientSession() as session:
            async with session.get(semantic.base_url.removesuffix("/v1") + "/ready") as resp:
                return resp.status

    kept = semantic.resources.kept
    loaded, pairs, analyzer = kept.get(EMBEDDER), kept.get(PAIR_MODEL), kept.get(ANALYZER)
    assert loaded is not None and pairs is not None and analyzer is not None
    semantic.run(loaded.wait_ready())
    semantic.run(analyzer.classifier.fitted.get())
    semantic.run(pairs.fitted.get())
    assert asyncio.run(ready_status()) == 200
    kept.replace(EMBEDDER, Embedder())  # a model that has not loaded yet
    try:
        assert asyncio.run(ready_status()) == 503
    finally:
        kept.replace(EMBEDDER, loaded)
    kept.replace(PAIR_MODEL, PairModel(loaded, pairs.pairs[:50], 0.99, 0.5))  # not fitted yet
    try:
        assert asyncio.run(ready_status()) == 503
    finally:
        kept.replace(PAIR_MODEL, pairs)


JUDGE_RULES = RULES + 'judge_model = "gpt-4o-mini"\njudge_below = 1.0\n'  # judge every candidate


def judged(tmp_path: Path, verdict: str) -> LiveProxy:
    """A proxy whose semantic cache asks the (fake) cheap model, which says `verdict`."""
    fake = FakeUpstream(scripted={"Would one correct answer serve both": verdict})
    return LiveProxy(tmp_path, rules=JUDGE_RULES, fake=fake)


def judge_calls(live: LiveProxy) -> list[dict[str, Any]]:
    return [b for b in live.fake.received if b["model"] == "gpt-4o-mini"]


def test_judge_yes_serves_the_hit_and_its_tokens_are_billed(tmp_path: Path) -> None:
    with judged(tmp_path, "Yes") as live:
        first = ask(live, QUESTION)
        second = ask(live, PARAPHRASE)
        assert second.headers["x-proxy-stage"] == "semantic_cache"
        assert second.parse().choices[0].message.content == \
            first.parse().choices[0].message.content
        [call] = judge_calls(live)
        assert call["max_tokens"] == 1 and PARAPHRASE.lower().rstrip("?") in \
            call["messages"][0]["content"].lower()
        [row] = [r for r in live.ledger_rows() if r["source"] == "judge"]
        assert row["tenant"] == "alice" and row["stage"] == "semantic_cache"
        assert row["cost_usd"] > 0 and row["baseline_usd"] == 0


def test_judge_no_is_a_miss(tmp_path: Path) -> None:
    with judged(tmp_path, "No") as live:
        ask(live, QUESTION)
        reply = ask(live, PARAPHRASE)
        assert reply.headers["x-proxy-stage"] == "upstream"
        assert len(judge_calls(live)) == 1
        assert live.fake.received[-1]["messages"][-1]["content"] == PARAPHRASE


def test_failing_judge_is_a_miss_and_the_request_is_still_served(tmp_path: Path) -> None:
    with judged(tmp_path, "Yes") as live:
        ask(live, QUESTION)
        live.fake.fail("500", count=-1, model="gpt-4o-mini")
        reply = ask(live, PARAPHRASE)
        assert reply.headers["x-proxy-stage"] == "upstream"
        assert reply.parse().choices[0].message.content.startswith("[gpt-4o] Here is my answer")
        assert not [r for r in live.ledger_rows() if r["source"] == "judge"]


def semantic_decision(live: LiveProxy, text: str) -> dict[str, Any]:
    """The semantic cache's decision for a question, by a dry run (which stores nothing)."""
    report = live.client().post("/proxy/explain", cast_to=object, body={
        "model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
    return next(d for d in report["trace"] if d["stage"] == "semantic_cache")


def until(check: Any, timeout: float = 20.0) -> Any:
    """Poll `check()` until it returns something truthy (or the last value at the deadline)."""
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_entries_stored_or_purged_by_one_process_reach_the_others(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue("redis_storage") if backend == "redis" else None
    # two processes' worth of proxies over one store (for sqlite: one database file)
    with LiveProxy(tmp_path, rules=RULES, config=config) as one, \
            LiveProxy(tmp_path if backend == "sqlite" else tmp_path / "two", rules=RULES,
                      config=config) as two:
        assert semantic_decision(two, PARAPHRASE)["action"] == "miss"
        ask(one, QUESTION)
        hit = until(lambda: semantic_decision(two, PARAPHRASE)["action"] == "hit")
        assert hit, "the other process never saw the stored entry"
        assert "knees" in str(semantic_decision(two, PARAPHRASE))  # one's question
        status, purged = admin_call(one, "DELETE", "/v1/proxy/cache/alice")
        assert status == 200 and purged["purged"]["semantic_entries"] == 1
        gone = until(lambda: semantic_decision(two, PARAPHRASE)["action"] == "miss")
        assert gone, "the other process kept serving a purged entry"
        reply = ask(two, PARAPHRASE)
        assert reply.headers["x-proxy-stage"] == "upstream"


def test_eviction_keeps_what_another_process_keeps_hitting(tmp_path: Path) -> None:
    rules = RULES + "max_entries = 2\n"
    kettle, boiling = "how do I descale an electric kettle?", "why does pasta water boil over?"
    with LiveProxy(tmp_path, rules=rules) as one, LiveProxy(tmp_path, rules=rules) as two:
        ask(one, QUESTION)
        ask(one, kettle)
        assert until(lambda: semantic_decision(two, PARAPHRASE)["action"] == "hit")
        assert ask(two, PARAPHRASE).headers["x-proxy-stage"] == "semantic_cache"  # a hit on two
        ask(one, boiling)  # over max_entries on one: the least recently used anywhere goes
        assert until(lambda: semantic_decision(two, "how can I descale an electric kettle")[
            "action"] == "miss")
        assert semantic_decision(two, PARAPHRASE)["action"] == "hit"
        assert semantic_decision(one, PARAPHRASE)["action"] == "hit"
        assert semantic_decision(one, "how can I descale an electric kettle")["action"] == "miss"
