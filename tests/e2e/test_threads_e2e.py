"""The Assistants API end to end through the official openai SDK (sync and async)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AssistantEventHandler, AsyncAssistantEventHandler

from proxy.testing import LiveProxy
from proxy.threads import objects as thread_objects

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture(params=["sqlite", "redis"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveProxy]:
    """A proxy storing threads in sqlite, or in the shared redis under a random prefix."""
    if request.param == "sqlite":
        with LiveProxy(tmp_path) as proxy:
            yield proxy
        return
    with LiveProxy(tmp_path, config=request.getfixturevalue("redis_storage")) as proxy:
        yield proxy


def _setup(client: Any, *texts: str, tools: list[Any] | None = None) -> tuple[Any, Any]:
    assistant = client.beta.assistants.create(model="gpt-4o", instructions="You are terse.",
                                              tools=tools or [])
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": text} for text in texts])
    return assistant, thread


def text(page: Any) -> list[str]:
    """The texts of a page of messages."""
    return [m.content[0].text.value for m in page.data]


class TextCollector(AssistantEventHandler):
    """Collects text deltas and event names."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.events: list[str] = []

    def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.parts.append(delta.value)


def test_run_answers_from_instructions_and_thread_in_order(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "hello there")
    client.beta.threads.messages.create(thread.id, role="user", content="What is 2+2?")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id)
    assert run.status == "completed" and run.id.startswith("run_")
    assert run.usage.prompt_tokens > 0 and run.usage.completion_tokens > 0
    assert run.started_at and run.completed_at and run.last_error is None
    sent = live.fake.received[-1]
    assert sent["model"] == "gpt-4o"
    assert sent["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "hello there"},
                                {"role": "user", "content": "What is 2+2?"}]
    latest = client.beta.threads.messages.list(thread.id, limit=1).data[0]
    assert latest.role == "assistant" and latest.run_id == run.id
    assert latest.content[0].text.value == "[gpt-4o] Here is my answer to: What is 2+2?"
    assert [row["source"] for row in live.ledger_rows()] == ["thread"]


def test_run_overrides_reach_upstream(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "one", "two", "three")
    client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, model="gpt-4o-mini",
        instructions="Override.", additional_instructions="Also this.", temperature=0.3,
        max_completion_tokens=50, truncation_strategy={"type": "last_messages",
                                                       "last_messages": 2},
        additional_messages=[{"role": "user", "content": "four"}])
    sent = live.fake.received[-1]
    assert sent["model"] == "gpt-4o-mini" and sent["temperature"] == 0.3
    assert sent["max_completion_tokens"] == 50
    assert sent["messages"] == [{"role": "system", "content": "Override.\n\nAlso this."},
                                {"role": "user", "content": "three"},
                                {"role": "user", "content": "four"}]


def test_messages_list_in_both_orders_with_cursors(live: LiveProxy) -> None:
    client = live.client()
    _, thread = _setup(client, *[f"m{i}" for i in range(5)])
    asc = client.beta.threads.messages.list(thread.id, order="asc", limit=2)
    assert text(asc) == ["m0", "m1"] and asc.has_more
    after = client.beta.threads.messages.list(thread.id, order="asc", limit=2,
                                              after=asc.data[-1].id)
    assert text(after) == ["m2", "m3"]
    desc = client.beta.threads.messages.list(thread.id, order="desc", limit=2)
    assert text(desc) == ["m4", "m3"]
    before = client.beta.threads.messages.list(thread.id, order="desc", limit=2,
                                               before=after.data[0].id)
    assert text(before) == ["m4", "m3"]
    every = [m.content[0].text.value
             for m in client.beta.threads.messages.list(thread.id, order="asc", limit=2)]
    assert every == ["m0", "m1", "m2", "m3", "m4"]  # the SDK follows has_more/after


def test_stream_handler_collects_text_deltas_and_openai_events(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "tell me a story")
    handler = TextCollector()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id,
                                         event_handler=handler) as stream:
        stream.until_done()
    assert "".join(handler.parts) == "[gpt-4o] Here is my answer to: tell me a story"
    assert handler.events[:3] == ["thread.run.created", "thread.run.queued",
                                  "thread.run.in_progress"]
    assert {"thread.run.step.created", "thread.message.created", "thread.message.delta",
            "thread.message.completed", "thread.run.step.completed"} <= set(handler.events)
    assert handler.events[-1] == "thread.run.completed"
    assert live.fake.received[-1]["stream"] is True
    stored = client.beta.threads.messages.list(thread.id, limit=1).data[0]
    assert stored.content[0].text.value == "".join(handler.parts)


def test_stream_without_handler_until_done(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "hi")
    with client.beta.threads.runs.stream(thread_id=thread.id,
                                         assistant_id=assistant.id) as stream:
        stream.until_done()
        final = stream.get_final_run()
    assert final.status == "completed"
    assert stream.get_final_messages()[0].content[0].text.value.startswith("[gpt-4o]")


def test_create_and_run_poll(live: LiveProxy) -> None:
    client = live.client()
    assistant = client.beta.assistants.create(model="gpt-4o-mini")
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "ping"}]})
    assert run.status == "completed"
    messages = client.beta.threads.messages.list(run.thread_id, order="asc").data
    assert [m.role for m in messages] == ["user", "assistant"]
    assert live.fake.received[-1]["messages"] == [{"role": "user", "content": "ping"}]


def test_function_tool_round_trip(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "get weather in Paris", tools=[WEATHER_TOOL])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id)
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    assert call.function.name == "get_weather"
    assert live.fake.received[-1]["tools"] == [WEATHER_TOOL]
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "sunny, 21C"}])
    assert run.status == "completed"
    sent = live.fake.received[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call.id
    assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}
    answer = client.beta.threads.messages.list(thread.id, limit=1).data[0]
    assert "sunny, 21C" in answer.content[0].text.value
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    assert steps[0].step_details.tool_calls[0].function.output == "sunny, 21C"
    assert client.beta.threads.runs.steps.retrieve(
        steps[1].id, thread_id=thread.id, run_id=run.id).status == "completed"


def test_function_tool_round_trip_streamed(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "get weather in Oslo", tools=[WEATHER_TOOL])
    with client.beta.threads.runs.stream(thread_id=thread.id,
                                         assistant_id=assistant.id) as stream:
        stream.until_done()
        run = stream.get_final_run()
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    handler = TextCollector()
    with client.beta.threads.runs.submit_tool_outputs_stream(
            run_id=run.id, thread_id=thread.id, event_handler=handler,
            tool_outputs=[{"tool_call_id": call.id, "output": "snow"}]) as stream:
        stream.until_done()
    assert "snow" in "".join(handler.parts)
    assert handler.events[-1] == "thread.run.completed"


def test_one_active_run_per_thread(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "get weather in Rome", tools=[WEATHER_TOOL])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id)
    assert run.status == "requires_action"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert f"already has an active run {run.id}" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.messages.create(thread.id, role="user", content="more")


def test_cancel_waiting_run_frees_the_thread(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "get weather in Rome", tools=[WEATHER_TOOL])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id)
    cancelled = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    again = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                     assistant_id=assistant.id)
    assert again.status == "requires_action"


def test_cancel_in_progress_run_ends_cancelled(live: LiveProxy) -> None:
    live.fake.ttft = 1.5  # long enough for the cancel to land while the model "thinks"
    client = live.client()
    assistant, thread = _setup(client, "slow question")
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    cancelling = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelling.status == "cancelling"
    final = client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=20)
    assert final.status == "cancelled"


def test_failed_upstream_fails_the_run_with_last_error(live: LiveProxy) -> None:
    live.fake.fail("400")
    client = live.client()
    assistant, thread = _setup(client, "hi")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id)
    assert run.status == "failed" and run.failed_at
    assert run.last_error.code == "invalid_prompt"
    assert "non-empty array" in run.last_error.message


def test_max_completion_tokens_makes_run_incomplete(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "write a long answer about everything")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id,
                                                   max_completion_tokens=3)
    assert run.status == "incomplete"
    assert run.incomplete_details.reason == "max_completion_tokens"
    message = client.beta.threads.messages.list(thread.id, limit=1).data[0]
    assert message.status == "incomplete"


def test_keys_cannot_see_each_others_objects(live: LiveProxy) -> None:
    alice, bob = live.client("alice"), live.client("bob")
    assistant, thread = _setup(alice, "secret")
    run = alice.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                  assistant_id=assistant.id)
    attempts = [
        lambda: bob.beta.assistants.retrieve(assistant.id),
        lambda: bob.beta.threads.retrieve(thread.id),
        lambda: bob.beta.threads.messages.list(thread.id),
        lambda: bob.beta.threads.messages.create(thread.id, role="user", content="x"),
        lambda: bob.beta.threads.runs.retrieve(run.id, thread_id=thread.id),
        lambda: bob.beta.threads.delete(thread.id),
        lambda: bob.beta.assistants.delete(assistant.id),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert bob.beta.assistants.list().data == []
    bob_assistant = bob.beta.assistants.create(model="gpt-4o")
    with pytest.raises(openai.NotFoundError) as err:
        bob.beta.threads.runs.create(thread_id=thread.id, assistant_id=bob_assistant.id)
    assert err.value.body["message"] == f"No thread found with id '{thread.id}'."
    assert alice.beta.threads.retrieve(thread.id).id == thread.id


def test_deleting_a_thread_deletes_its_messages_and_runs(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "hi")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id)
    message_id = client.beta.threads.messages.list(thread.id).data[0].id
    deleted = client.beta.threads.delete(thread.id)
    assert deleted.deleted and deleted.object == "thread.deleted"
    for attempt in [lambda: client.beta.threads.retrieve(thread.id),
                    lambda: client.beta.threads.messages.retrieve(message_id,
                                                                  thread_id=thread.id),
                    lambda: client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)]:
        with pytest.raises(openai.NotFoundError):
            attempt()


@pytest.mark.parametrize("tool_type", ["file_search", "code_interpreter"])
def test_file_tools_are_refused_naming_what_is_supported(live: LiveProxy,
                                                         tool_type: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        live.client().beta.assistants.create(model="gpt-4o", tools=[{"type": tool_type}])
    assert tool_type in err.value.message and "['function']" in err.value.message


def test_crud_of_assistants_messages_and_runs(live: LiveProxy) -> None:
    client = live.client()
    assistant, thread = _setup(client, "hi")
    updated = client.beta.assistants.update(assistant.id, name="Terse",
                                            metadata={"team": "a"})
    assert updated.name == "Terse" and updated.instructions == "You are terse."
    assert client.beta.assistants.list(limit=5).data[0].id == assistant.id
    assert client.beta.threads.update(thread.id, metadata={"k": "v"}).metadata == {"k": "v"}
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert client.beta.threads.messages.update(message.id, thread_id=thread.id,
                                               metadata={"x": "1"}).metadata == {"x": "1"}
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id)
    assert client.beta.threads.runs.update(run.id, thread_id=thread.id,
                                           metadata={"r": "2"}).metadata == {"r": "2"}
    assert [r.id for r in client.beta.threads.runs.list(thread.id)] == [run.id]
    only_run = client.beta.threads.messages.list(thread.id, run_id=run.id).data
    assert [m.role for m in only_run] == ["assistant"]
    gone = client.beta.threads.messages.delete(message.id, thread_id=thread.id)
    assert gone.deleted and gone.object == "thread.message.deleted"
    assert client.beta.assistants.delete(assistant.id).deleted


@pytest.mark.parametrize(
    ("call", "message_part"),
    [
        (lambda c, t: c.beta.threads.runs.create(thread_id=t, assistant_id="asst_nope"),
         "No assistant found with id 'asst_nope'."),
        (lambda c, t: c.beta.threads.messages.retrieve("msg_nope", thread_id=t),
         "No message found with id 'msg_nope'."),
        (lambda c, t: c.beta.threads.retrieve("thread_nope"),
         "No thread found with id 'thread_nope'."),
    ],
)
def test_unknown_ids_get_openai_404(live: LiveProxy, call: Any, message_part: str) -> None:
    client = live.client()
    thread = client.beta.threads.create()
    with pytest.raises(openai.NotFoundError) as err:
        call(client, thread.id)
    assert err.value.body["message"] == message_part


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"truncation_strategy": {"type": "last_messages", "last_messages": 0}},
         "truncation_strategy"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"additional_messages": [{"role": "system", "content": "x"}]},
         "additional_messages[0].role"),
    ],
)
def test_bad_run_bodies_get_400(live: LiveProxy, kwargs: dict[str, Any], param: str) -> None:
    client = live.client()
    assistant, thread = _setup(client, "hi")
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id,
                                        **kwargs)
    assert err.value.body["param"] == param
    assert len(live.fake.received) == 0


def test_async_client_poll_and_stream(live: LiveProxy) -> None:
    class Collector(AsyncAssistantEventHandler):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []

        async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
            self.parts.append(delta.value)

    async def go() -> tuple[str, str]:
        client = live.async_client()
        assistant = await client.beta.assistants.create(model="gpt-4o")
        thread = await client.beta.threads.create(
            messages=[{"role": "user", "content": "async hello"}])
        run = await client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                             assistant_id=assistant.id)
        handler = Collector()
        async with client.beta.threads.runs.stream(thread_id=thread.id,
                                                   assistant_id=assistant.id,
                                                   event_handler=handler) as stream:
            await stream.until_done()
        await client.close()
        return run.status, "".join(handler.parts)

    status, text = asyncio.run(go())
    assert status == "completed" and text.startswith("[gpt-4o]")


def test_run_waiting_past_expires_at_is_expired(live: LiveProxy,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thread_objects, "RUN_TTL_SECONDS", -1)
    client = live.client()
    assistant, thread = _setup(client, "get weather in Lima", tools=[WEATHER_TOOL])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id,
                                                   assistant_id=assistant.id)
    expired = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert expired.status == "expired" and expired.required_action is None
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(
            run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "x",
                                                               "output": "y"}])


def test_create_and_run_stream_announces_the_new_thread(live: LiveProxy) -> None:
    client = live.client()
    assistant = client.beta.assistants.create(model="gpt-4o")
    handler = TextCollector()
    with client.beta.threads.create_and_run_stream(
            assistant_id=assistant.id, event_handler=handler,
            thread={"messages": [{"role": "user", "content": "hey"}]}) as stream:
        stream.until_done()
    assert handler.events[0] == "thread.created"
    assert "".join(handler.parts) == "[gpt-4o] Here is my answer to: hey"
