"""The official openai Node SDK against a live proxy: `tests/node/sdk_check.mjs` makes the
calls a Node client makes (chat, streams, Responses, embeddings, models) and prints what it
saw; the proxy's own answers (a pattern reply, exact-cache hits) must parse there too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from proxy.testing import LiveProxy

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
INSTALL = "npm ci --prefix tests/node"
# share = "all": every answer is shared, so the cache needs no embedding model to decide.
RULES = ('pipeline = ["patterns", "exact_cache"]\n[exact_cache]\nshare = "all"\n[patterns]\n'
         '[[patterns.rules]]\nname = "hello"\nphrases = ["hey", "hi"]\nreplies = ["Hey!"]\n')


def fake_answer(asked: str, model: str = "gpt-4o") -> str:
    """What the fake upstream deterministically answers to a last user message."""
    return f"[{model}] Here is my answer to: {asked}"


def node_binary() -> str:
    """The `node` on PATH; fails the test (never skips) when Node or the SDK is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed: install Node.js 20+, then run `{INSTALL}`")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        pytest.fail(f"the openai Node SDK is not installed: run `{INSTALL}`")
    return node


def run_sdk_check(live: LiveProxy) -> dict[str, Any]:
    """Run the Node script against the proxy; the JSON object it printed."""
    env = {"PATH": os.environ.get("PATH", ""), "OPENAI_BASE_URL": live.base_url,
           "OPENAI_API_KEY": live.key("alice")}
    done = subprocess.run([node_binary(), str(NODE_DIR / "sdk_check.mjs")], env=env,
                          cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the Node SDK saw, and the proxy's ledger and upstream afterwards."""
    with LiveProxy(tmp_path_factory.mktemp("node"), rules=RULES) as live:
        result = run_sdk_check(live)
        result["ledger"] = live.wait_ledger_rows(9)
        result["upstream_bodies"] = list(live.fake.received)
        result["upstream_calls"] = live.fake.calls("POST", "/v1/embeddings")
    return result


def test_chat_completion_then_the_same_request_from_the_exact_cache(seen: dict[str, Any]) -> None:
    first, again = seen["chat"], seen["chat_again"]
    assert first["text"] == again["text"] == fake_answer(first["asked"])
    assert (first["stage"], first["cache"]) == ("upstream", "miss")
    assert (again["stage"], again["cache"]) == ("exact_cache", "hit-exact")
    assert first["id"].startswith("chatcmpl-") and again["id"] != first["id"]
    stages = {row["request_id"]: row["stage"] for row in seen["ledger"]}
    assert stages[first["request_id"]] == "upstream"
    assert stages[again["request_id"]] == "exact_cache"


def test_streamed_chat_text_is_the_fakes_answer(seen: dict[str, Any]) -> None:
    stream = seen["chat_stream"]
    assert stream["text"] == fake_answer(stream["asked"])
    assert stream["chunks"] > 2  # the fake streams 8-character pieces


def test_plain_response_from_upstream(seen: dict[str, Any]) -> None:
    response = seen["response"]
    assert response["id"].startswith("resp_") and response["object"] == "response"
    assert response["status"] == "completed" and response["stage"] == "upstream"
    assert response["text"] == fake_answer(response["asked"])


def test_response_stream_helper_yields_text_and_the_final_response(
        seen: dict[str, Any]) -> None:
    stream = seen["response_stream"]
    expected = fake_answer(stream["asked"])
    assert stream["text"] == stream["final"]["text"] == expected
    assert stream["final"]["status"] == "completed"
    assert stream["final"]["id"].startswith("resp_")
    assert stream["types"][0] == "response.created"
    assert stream["types"][-1] == "response.completed"
    assert stream["types"].count("response.output_text.delta") > 1


def test_followup_continues_the_chain_and_is_retrievable(seen: dict[str, Any]) -> None:
    first, followup, retrieved = seen["response"], seen["followup"], seen["retrieved"]
    assert followup["previous_response_id"] == first["id"]
    assert followup["text"] == fake_answer(followup["asked"])
    assert retrieved == {"id": followup["id"], "text": followup["text"],
                         "previous_response_id": first["id"]}
    (sent,) = [b for b in seen["upstream_bodies"]
               if b.get("messages") and b["messages"][-1]["content"] == followup["asked"]]
    # the earlier turn goes upstream; its instructions do not carry over (as in OpenAI's API)
    assert sent["messages"] == [{"role": "user", "content": first["asked"]},
                                {"role": "assistant", "content": first["text"]},
                                {"role": "user", "content": followup["asked"]}]


def test_pattern_replies_are_responses_plain_and_streamed(seen: dict[str, Any]) -> None:
    plain, streamed = seen["pattern"], seen["pattern_stream"]
    assert (plain["stage"], plain["text"], plain["status"]) == ("pattern", "Hey!", "completed")
    assert plain["id"].startswith("resp_")
    assert streamed["text"] == streamed["final"]["text"] == "Hey!"
    assert streamed["types"][-1] == "response.completed"
    asked = {b["messages"][-1]["content"] for b in seen["upstream_bodies"] if b.get("messages")}
    assert not asked & {plain["asked"], streamed["asked"]}


def test_embeddings_and_models(seen: dict[str, Any]) -> None:
    embedding = seen["embedding"]
    assert (embedding["count"], embedding["dimensions"]) == (1, 1536)
    assert embedding["prompt_tokens"] > 0 and embedding["stage"] == "upstream"
    assert seen["upstream_calls"] == 1
    assert "gpt-4o" in seen["models"]


def test_every_call_is_one_ledger_row_with_the_stage_that_answered(
        seen: dict[str, Any]) -> None:
    rows = sorted((row["source"], row["stage"], row["status"]) for row in seen["ledger"])
    assert rows == sorted([
        ("chat", "upstream", 200), ("chat", "exact_cache", 200), ("chat", "upstream", 200),
        ("responses", "upstream", 200), ("responses", "upstream", 200),
        ("responses", "upstream", 200), ("responses", "pattern", 200),
        ("responses", "pattern", 200), ("passthrough", "upstream", 200)])
