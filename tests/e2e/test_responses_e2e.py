"""`/v1/responses` end to end through the official openai SDK (sync, async, streaming)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from proxy.pipeline.summary import DEFAULT_PROMPT, SUMMARY_INTRO
from proxy.responses.store import RESPONSES
from proxy.store.kv import StoreError
from proxy.testing import LiveProxy

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}
FILLER = ("I have been working on my running habit and my sleep schedule, and this week "
          "I managed four runs and went to bed before eleven on most nights. ")
TRIM_RULES = ('pipeline = ["trim"]\n[trim]\nkeep_last = 6\nsummarize_every = 4\n'
              "max_prompt_tokens = 100000\nsummary_max_tokens = 60\n")
FREE_RULES = ('pipeline = ["patterns", "exact_cache"]\n[exact_cache]\n[patterns]\n'
              '[[patterns.rules]]\nname = "hello"\nphrases = ["hey", "hi"]\nreplies = ["Hey!"]\n')


@pytest.fixture(params=["sqlite", "redis"])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveProxy]:
    """A proxy storing responses in sqlite, or in the shared redis under a random prefix."""
    config = request.getfixturevalue("redis_storage") if request.param == "redis" else None
    with LiveProxy(tmp_path, config=config) as proxy:
        yield proxy


def responses_rows(live: LiveProxy) -> list[dict[str, Any]]:
    """The ledger rows of /v1/responses requests."""
    return [row for row in live.ledger_rows() if row["source"] == "responses"]


def chat_requests(live: LiveProxy) -> list[dict[str, Any]]:
    """What the upstream received, summarizer calls left out."""
    return [b for b in live.fake.received if b["messages"][0]["content"] != DEFAULT_PROMPT]


def collect(stream: Any) -> tuple[list[str], str, Any]:
    """(event types, joined text deltas, the final response event's response) of a stream."""
    kinds, text, final = [], [], None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text.append(event.delta)
        if event.type in ("response.completed", "response.incomplete", "response.failed"):
            final = event.response
    return kinds, "".join(text), final


# --- create -------------------------------------------------------------------------------


def test_create_translates_to_chat_and_answers_a_response(live: LiveProxy) -> None:
    raw = live.client().responses.with_raw_response.create(
        model="gpt-4o", input="What is a good morning routine", instructions="Be terse.",
        temperature=0.3, max_output_tokens=200, metadata={"app": "coach"}, user="u-7")
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "[gpt-4o] Here is my answer to: What is a good morning routine"
    assert response.instructions == "Be terse." and response.metadata == {"app": "coach"}
    assert response.max_output_tokens == 200 and response.temperature == 0.3
    sent = live.fake.received[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": "What is a good morning routine"}]
    assert (sent["max_completion_tokens"], sent["temperature"], sent["user"],
            sent["metadata"]) == (200, 0.3, "u-7", {"app": "coach"})
    assert raw.headers["x-proxy-stage"] == "upstream" and raw.headers["x-proxy-model"] == "gpt-4o"
    assert raw.headers["x-request-id"].startswith("req_")
    (row,) = responses_rows(live)
    assert (row["status"], row["stage"], row["request_id"]) == (200, "upstream",
                                                                raw.headers["x-request-id"])
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        row["prompt_tokens"], row["completion_tokens"])
    assert response.usage.total_tokens == row["prompt_tokens"] + row["completion_tokens"] > 0


def test_stream_helper_yields_typed_events_and_the_final_response(live: LiveProxy) -> None:
    client = live.client()
    with client.responses.stream(model="gpt-4o", input="tell me a story") as stream:
        kinds, text, _ = collect(stream)
        final = stream.get_final_response()
    expected_text = "[gpt-4o] Here is my answer to: tell me a story"
    assert text == expected_text and final.output_text == expected_text
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert kinds.count("response.output_text.delta") > 1  # the fake streams 8-char pieces
    assert final.status == "completed" and final.usage is not None
    assert final.usage.input_tokens > 0
    assert live.fake.received[-1]["stream"] is True
    assert client.responses.retrieve(final.id).output_text == expected_text
    assert [row["stream"] for row in responses_rows(live)] == [1]


def test_create_stream_true_numbers_events_in_sequence(live: LiveProxy) -> None:
    stream = live.client().responses.create(model="gpt-4o", input="count", stream=True)
    events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "[gpt-4o] Here is my answer to: count"


def test_async_client_plain_and_streamed(live: LiveProxy) -> None:
    async def go() -> tuple[str, str, str]:
        client = live.async_client()
        plain = await client.responses.create(model="gpt-4o-mini", input="async hello")
        async with client.responses.stream(model="gpt-4o-mini", input="async stream",
                                           previous_response_id=plain.id) as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        return plain.output_text, "".join(deltas), final.output_text

    plain, streamed, final = asyncio.run(go())
    assert plain == "[gpt-4o-mini] Here is my answer to: async hello"
    assert streamed == final == "[gpt-4o-mini] Here is my answer to: async stream"
    assert [m["role"] for m in live.fake.received[-1]["messages"]] == ["user", "assistant",
                                                                       "user"]


def test_max_output_tokens_cut_is_incomplete_plain_and_streamed(live: LiveProxy) -> None:
    client = live.client()
    essay = f"write a long essay on this: {FILLER}"  # the fake's echo runs past 16 tokens
    response = client.responses.create(model="gpt-4o", input=essay, max_output_tokens=16)
    assert response.status == "incomplete" and response.usage is not None
    assert response.usage.output_tokens == 16
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    kinds, _, final = collect(client.responses.create(model="gpt-4o", input=essay,
                                                      max_output_tokens=16, stream=True))
    assert kinds[-1] == "response.incomplete" and final.status == "incomplete"


def test_a_stream_cut_upstream_ends_in_response_failed(live: LiveProxy) -> None:
    live.fake.fail("cut")
    kinds, text, final = collect(live.client().responses.create(
        model="gpt-4o", input="this stream will break", stream=True))
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    assert text and final.status == "failed" and final.error is not None
    assert final.error.code == "server_error"


# --- conversation state -------------------------------------------------------------------


def test_thirty_turn_chain_is_trimmed_with_a_summary(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=TRIM_RULES) as live:
        client = live.client()
        previous = None
        for turn in range(30):
            response = client.responses.create(model="gpt-4o", instructions="Coach me.",
                                               input=f"turn {turn}: {FILLER}",
                                               previous_response_id=previous)
            previous = response.id
        sent = chat_requests(live)[-1]["messages"]
        assert sent[0] == {"role": "system", "content": "Coach me."}
        assert sent[1]["role"] == "system" and sent[1]["content"].startswith(SUMMARY_INTRO)
        assert sent[-1] == {"role": "user", "content": f"turn 29: {FILLER}"}
        assert 2 < len(sent) - 2 <= 6  # the recent turns, verbatim
        assert not any(m["content"].startswith("turn 0:") for m in sent[2:])
        summaries = [b for b in live.fake.received if b["messages"][0]["content"] == DEFAULT_PROMPT]
        assert summaries and "turn 0:" in summaries[0]["messages"][1]["content"]
        traces = [json.loads(row["trace"]) for row in responses_rows(live)]
        trims = [d for trace in traces for d in trace if d["stage"] == "trim"]
        assert len(trims) == 30 and trims[-1]["action"] == "summarized"
        assert any(d.get("summary") == "thread" for d in trims)  # handed on along the chain
        assert response.output_text.startswith("[gpt-4o] Here is my answer to: turn 29")


def test_function_call_round_trip(live: LiveProxy) -> None:
    client = live.client()
    first = client.responses.create(model="gpt-4o", input="get weather in Paris",
                                    tools=[WEATHER])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "example"}
    assert live.fake.received[-1]["tools"] == [{"type": "function", "function": {
        key: WEATHER[key] for key in ("name", "description", "parameters", "strict")}}]
    second = client.responses.create(
        model="gpt-4o", previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": "sunny, 21C"}])
    assert second.output_text == "[gpt-4o] Based on the tool result: sunny, 21C"
    sent = live.fake.received[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21C"}


def test_function_call_streamed(live: LiveProxy) -> None:
    with live.client().responses.stream(model="gpt-4o", input="get weather in Oslo",
                                        tools=[WEATHER]) as stream:
        kinds, _, _ = collect(stream)
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    (call,) = final.output
    assert call.type == "function_call" and call.parsed_arguments == {"city": "example"}


def test_structured_output_via_text_format(live: LiveProxy) -> None:
    class City(BaseModel):
        city: str
        country: str

    live.fake.scripted["capital of France"] = '{"city": "Paris", "country": "France"}'
    parsed = live.client().responses.parse(model="gpt-4o", input="What is the capital of France",
                                           text_format=City)
    assert parsed.output_parsed == City(city="Paris", country="France")
    fmt = live.fake.received[-1]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "City"
    assert fmt["json_schema"]["strict"] is True
    assert set(fmt["json_schema"]["schema"]["properties"]) == {"city", "country"}
    live.client().responses.create(model="gpt-4o", input="json please",
                                   text={"format": {"type": "json_object"}})
    assert live.fake.received[-1]["response_format"] == {"type": "json_object"}


def test_retrieve_list_input_items_and_delete(stored: LiveProxy) -> None:
    client = stored.client()
    created = client.responses.create(model="gpt-4o", input=[
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "input_text", "text": "three"}]}])
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    assert fetched.usage == created.usage
    page = client.responses.input_items.list(created.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    items = list(client.responses.input_items.list(created.id, limit=2))  # SDK follows `after`
    texts = [item.content[0].text for item in items]
    assert texts == ["three", "two", "one"]
    assert [i.role for i in items] == ["user", "assistant", "user"]
    asc = client.responses.input_items.list(created.id, order="asc")
    assert [item.content[0].text for item in asc.data] == ["one", "two", "three"]
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_another_key_cannot_see_or_continue_a_response(stored: LiveProxy) -> None:
    mine = stored.client("alice").responses.create(model="gpt-4o", input="secret plans")
    bob = stored.client("bob")
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(mine.id)
    with pytest.raises(openai.BadRequestError) as err:
        bob.responses.create(model="gpt-4o", input="and?", previous_response_id=mine.id)
    assert err.value.code == "previous_response_not_found"
    assert err.value.param == "previous_response_id"
    assert stored.client("alice").responses.retrieve(mine.id).id == mine.id


def test_store_false_is_not_kept(live: LiveProxy) -> None:
    client = live.client()
    response = client.responses.create(model="gpt-4o", input="forget me", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_a_failing_store_still_answers(live: LiveProxy) -> None:
    async def broken_put(*args: Any, **kwargs: Any) -> None:
        raise StoreError("sqlite store failed: disk I/O error")

    live.app[RESPONSES].kv = SimpleNamespace(put=broken_put)
    response = live.client().responses.create(model="gpt-4o", input="still there?")
    assert response.output_text == "[gpt-4o] Here is my answer to: still there?"
    assert [row["status"] for row in responses_rows(live)] == [200]


# --- free answers -------------------------------------------------------------------------


def test_pattern_reply_is_a_response_plain_and_streamed(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=FREE_RULES) as live:
        client = live.client()
        raw = client.responses.with_raw_response.create(model="gpt-4o", input="hi")
        response = raw.parse()
        assert raw.headers["x-proxy-stage"] == "pattern" and response.output_text == "Hey!"
        assert response.status == "completed" and response.usage is not None
        assert response.usage.total_tokens == 0
        with client.responses.stream(model="gpt-4o", input="hi",
                                     previous_response_id=response.id) as stream:
            kinds, text, _ = collect(stream)
            final = stream.get_final_response()
        assert text == final.output_text == "Hey!" and kinds[-1] == "response.completed"
        assert not live.fake.received
        assert client.responses.retrieve(final.id).previous_response_id == response.id
        assert [row["stage"] for row in responses_rows(live)] == ["pattern", "pattern"]


def test_exact_cache_hit_is_a_response_plain_and_streamed(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=FREE_RULES) as live:
        client = live.client()
        ask = {"model": "gpt-4o", "input": "What is a good evening routine",
               "instructions": "Be brief."}
        first = client.responses.create(**ask)
        raw = client.responses.with_raw_response.create(**ask)
        hit = raw.parse()
        assert raw.headers["x-proxy-stage"] == "exact_cache"
        assert raw.headers["x-proxy-cache"] == "hit-exact"
        assert hit.output_text == first.output_text and hit.id != first.id
        with client.responses.with_streaming_response.create(stream=True, **ask) as resp:
            assert resp.headers["x-proxy-stage"] == "exact_cache"
            kinds, text, final = collect(resp.parse())
        assert text == first.output_text and final.output_text == first.output_text
        assert kinds[-1] == "response.completed"
        assert len(live.fake.received) == 1
        assert [row["stage"] for row in responses_rows(live)] == ["upstream", "exact_cache",
                                                                  "exact_cache"]


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"background": True}, "background"),
    ({"conversation": "conv_123"}, "conversation"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
])
def test_requests_needing_upstream_state_go_to_the_upstreams_responses_api(
        live: LiveProxy, extra: dict[str, Any], param: str) -> None:
    params = {"model": "gpt-4o", "input": "search the news", **extra}
    raw = live.client().responses.with_raw_response.create(**params)
    response = raw.parse()
    assert response.output_text.startswith("(fake gpt-4o response")
    assert raw.headers["x-proxy-stage"] == "upstream"
    assert live.fake.calls("POST", "/v1/responses") == 1  # forwarded as it came
    assert not live.fake.received  # not translated to chat completions
    [row] = live.wait_ledger_rows(1)  # written once the answer's last byte went
    assert row["source"] == "passthrough" and row["cost_usd"] > 0


@pytest.mark.parametrize(("params", "param"), [
    ({"input": "x", "temperature": 5}, "temperature"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": "x", "previous_response_id": "resp_missing"}, "previous_response_id"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
     "text.format.name"),
])
def test_invalid_requests_are_openai_shaped_400s(live: LiveProxy, params: dict[str, Any],
                                                 param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        live.client().responses.create(model="gpt-4o", **params)
    assert err.value.param == param and err.value.type == "invalid_request_error"
    assert not live.fake.received
