"""Chat completions end to end through the official openai SDK (sync and async)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import aiohttp
import openai
import pytest

from proxy.testing import LiveProxy
from proxy.upstream.fake import FakeUpstream

USER = [{"role": "user", "content": "What is a good morning routine?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


def test_plain_completion_reports_stage_model_and_usage(live: LiveProxy) -> None:
    raw = live.client().chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("[gpt-4o]")
    assert completion.usage.prompt_tokens > 0
    assert raw.headers["x-proxy-stage"] == "upstream"
    assert raw.headers["x-proxy-model"] == "gpt-4o"
    assert raw.headers["x-proxy-request-id"] == raw.headers["x-request-id"]


def test_unknown_and_optional_fields_reach_upstream_untouched(live: LiveProxy) -> None:
    live.client().chat.completions.create(
        model="gpt-4o", messages=USER, seed=7, metadata={"streak": "9"},
        response_format={"type": "json_object"}, logprobs=True, top_logprobs=2,
        extra_body={"future_field": {"x": [1, 2]}},
    )
    sent = live.fake.received[-1]
    assert sent["seed"] == 7 and sent["metadata"] == {"streak": "9"}
    assert sent["future_field"] == {"x": [1, 2]} and sent["top_logprobs"] == 2
    assert sent["response_format"] == {"type": "json_object"}


def test_upstream_gets_its_own_key_never_the_clients(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-upstream-secret")
    fake = FakeUpstream()
    with LiveProxy(tmp_path, fake=fake, config={"upstream": {"key_env": "FAKE_UPSTREAM_KEY"}}
                   ) as live:
        raw = live.client().chat.completions.with_raw_response.create(model="gpt-4o",
                                                                      messages=USER)
    assert fake.received_headers[-1]["Authorization"] == "Bearer sk-upstream-secret"
    assert "sk-upstream-secret" not in str(raw.headers) + raw.text


def test_streaming_passes_chunks_and_hides_usage_unless_asked(live: LiveProxy) -> None:
    client = live.client()
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=USER, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[gpt-4o] Here is my answer")
    assert all(c.usage is None for c in chunks)
    assert live.fake.received[-1]["stream_options"] == {"include_usage": True}
    with_usage = list(client.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens > 0
    rows = live.ledger_rows()
    assert [r["completion_tokens"] > 0 for r in rows] == [True, True]


def test_async_client_plain_and_stream(live: LiveProxy) -> None:
    async def go() -> tuple[str, str]:
        client = live.async_client()
        plain = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=USER,
                                                      stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return plain.choices[0].message.content, "".join(parts)

    plain, streamed = asyncio.run(go())
    assert plain == streamed


def test_tool_call_round_trip(live: LiveProxy) -> None:
    client = live.client()
    messages: list = [{"role": "user", "content": "get weather in Paris"}]
    first = client.chat.completions.create(model="gpt-4o", messages=messages,
                                           tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    second = client.chat.completions.create(model="gpt-4o", messages=messages,
                                            tools=[WEATHER_TOOL])
    assert "sunny, 21C" in second.choices[0].message.content


def test_n_greater_than_one_returns_n_choices(live: LiveProxy) -> None:
    completion = live.client().chat.completions.create(model="gpt-4o", messages=USER, n=3)
    assert [c.index for c in completion.choices] == [0, 1, 2]


def test_unknown_key_gets_401_invalid_api_key(live: LiveProxy) -> None:
    client = openai.OpenAI(base_url=live.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert err.value.code == "invalid_api_key"
    assert len(live.fake.received) == 0


@pytest.mark.parametrize(
    ("body", "status", "message_part"),
    [
        (b"{not json", 400, "could not parse the JSON body"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model parameter"),
        (b'{"model": "gpt-4o", "messages": []}', 400, "non-empty array"),
        (b'{"model": "gpt\\u00004o", "messages": [{"role": "user", "content": "x"}]}', 400,
         "printable characters"),
        (b'{"model": "' + b"m" * 300 + b'", "messages": [{"role": "user", "content": "x"}]}',
         400, "printable characters"),
        (b'{"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}', 400,
         "messages[0].role"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], '
         b'"temperature": "hot"}', 400, "temperature"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 0}', 400,
         "'n'"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], '
         b'"stream": "yes"}', 400, "stream"),
    ],
)
def test_bad_bodies_get_openai_style_400(live: LiveProxy, body: bytes, status: int,
                                         message_part: str) -> None:
    async def post() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{live.base_url}/chat/completions", data=body,
                                    headers={"Authorization": f"Bearer {live.key()}"}) as resp:
                return resp.status, await resp.json()

    got_status, payload = asyncio.run(post())
    assert got_status == status
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert message_part in payload["error"]["message"]
    assert len(live.fake.received) == 0


def test_body_over_the_limit_gets_413(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, config={"server": {"max_body_bytes": 2048}}) as live:
        with pytest.raises(openai.APIStatusError) as err:
            live.client().chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x" * 5000}])
    assert err.value.status_code == 413
    assert "too large" in err.value.message


def test_upstream_500_is_retried_then_passed_through(live: LiveProxy) -> None:
    live.fake.fail("500", count=10)
    with pytest.raises(openai.InternalServerError) as err:
        live.client().chat.completions.create(model="gpt-4o", messages=USER)
    assert err.value.status_code == 500
    assert len(live.fake.received) == 3  # first try + max_retries=2


def test_transient_500_is_retried_invisibly(live: LiveProxy) -> None:
    live.fake.fail("500", count=1)
    completion = live.client().chat.completions.create(model="gpt-4o", messages=USER)
    assert completion.choices[0].message.content
    assert len(live.fake.received) == 2


def test_upstream_429_is_passed_through_with_its_body(live: LiveProxy) -> None:
    live.fake.fail("429", count=10, retry_after=0.01)
    with pytest.raises(openai.RateLimitError) as err:
        live.client().chat.completions.create(model="gpt-4o", messages=USER)
    assert "Rate limit reached (fake)" in err.value.message


def test_fallback_chain_answers_when_primary_model_keeps_failing(tmp_path: Path) -> None:
    fake = FakeUpstream()
    with LiveProxy(tmp_path, fake=fake,
                   config={"fallbacks": {"gpt-4o": ["fake:gpt-4o-mini"]}}) as live:
        fake.fail("500", count=-1, model="gpt-4o")
        raw = live.client().chat.completions.with_raw_response.create(model="gpt-4o",
                                                                      messages=USER)
    assert raw.parse().model == "gpt-4o-mini"
    assert raw.headers["x-proxy-model"] == "gpt-4o-mini"


def test_stream_cut_midway_reaches_client_as_error(live: LiveProxy) -> None:
    live.fake.fail("cut")
    stream = live.client().chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            pass
    assert "broke off" in str(err.value) or "before [DONE]" in str(err.value)
    rows = live.ledger_rows()
    assert rows[-1]["error"]


def test_models_lists_upstream_models(live: LiveProxy) -> None:
    ids = [m.id for m in live.client().models.list()]
    assert "gpt-4o" in ids and "gpt-4o-mini" in ids
    assert live.client().models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        live.client().models.retrieve("no-such-model")


def test_upstream_that_never_answers_times_out_as_504(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, config={"upstream": {"first_byte_timeout": 0.3,
                                                  "max_retries": 1}}) as live:
        live.fake.fail("hang", count=2)
        with pytest.raises(openai.APIStatusError) as err:
            live.client().chat.completions.create(model="gpt-4o", messages=USER)
    assert err.value.status_code == 504
    assert err.value.code == "upstream_timeout"


def test_ledger_rows_survive_a_clean_shutdown(tmp_path: Path) -> None:
    with LiveProxy(tmp_path) as live:
        for i in range(25):
            live.client().chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"question {i}"}])
    with sqlite3.connect(tmp_path / "proxy.db") as db:
        rows = db.execute("SELECT COUNT(*), SUM(prompt_tokens > 0) FROM ledger").fetchone()
    assert rows == (25, 25)


def test_request_ids_are_the_proxys_own(live: LiveProxy) -> None:
    raw = live.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=USER, extra_headers={"x-request-id": "=HYPERLINK(1)"})
    assert raw.headers["x-request-id"].startswith("req_")
    assert live.ledger_rows()[0]["request_id"] == raw.headers["x-request-id"]


def test_client_leaving_mid_stream_is_recorded_quietly(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with LiveProxy(tmp_path, fake=FakeUpstream(tokens_per_second=20)) as live:
        with live.client().chat.completions.create(model="gpt-4o", messages=USER,
                                                   stream=True) as stream:
            next(iter(stream))
        rows = live.wait_ledger_rows(1)
    assert rows[0]["status"] == 499
    assert rows[0]["cost_usd"] > 0  # the upstream produced (and bills) the whole answer
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
