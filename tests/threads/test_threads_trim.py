"""Thread runs are pruned by the trim stage, and the summary is kept on the thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.pipeline.summary import DEFAULT_PROMPT, SUMMARY_INTRO
from proxy.testing import LiveProxy

RULES = ('pipeline = ["trim"]\n[trim]\nkeep_last = 6\nsummarize_every = 4\n'
         "max_prompt_tokens = 100000\nsummary_max_tokens = 60\n")


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    with LiveProxy(tmp_path, rules=RULES) as proxy:
        yield proxy


def summary_calls(live: LiveProxy) -> int:
    return sum(1 for b in live.fake.received if b["messages"][0]["content"] == DEFAULT_PROMPT)


def test_long_thread_is_summarized_and_the_summary_outlives_the_cache(live: LiveProxy) -> None:
    client = live.client()
    assistant = client.beta.assistants.create(model="gpt-4o", instructions="Be a coach.")
    thread = client.beta.threads.create(messages=[
        {"role": "user" if i % 2 == 0 else "assistant",
         "content": f"turn {i}: " + "tell me more about sleep and habits " * 8}
        for i in range(7)])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id)
    assert run.status == "completed"
    sent = live.fake.received[-1]["messages"]
    assert sent[0]["content"] == "Be a coach."
    assert sent[1]["content"].startswith(SUMMARY_INTRO)
    assert len(sent) < 2 + 7 and summary_calls(live) == 1
    live.run(live.resources.kv.purge("summary:alice"))  # the cache forgets; the thread does not
    client.beta.threads.messages.create(thread.id, role="user", content="turn 10: and now?")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id)
    assert run.status == "completed"
    assert live.fake.received[-1]["messages"][1] == sent[1]
    assert summary_calls(live) == 1
