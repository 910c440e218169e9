"""Hostile requests get OpenAI-shaped 4xx answers, never a 500, a flooded log or a stall."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from proxy.accounting import ledger_entry
from proxy.api.validate import MAX_JSON_DEPTH, parse_json_object
from proxy.errors import InvalidRequest
from proxy.pipeline.facts import RequestFacts
from proxy.pipeline.text import MAX_ANALYZED_CHARS
from proxy.pricing import PriceTable
from proxy.testing import LiveProxy, make_context

DEFAULT_RULES = (Path(__file__).resolve().parents[2] / "rules" / "config.toml").read_text()
USER = [{"role": "user", "content": "What is a good morning routine?"}]
CHAT = {"model": "gpt-4o", "messages": USER}


def send(live: LiveProxy, path: str, data: bytes, key: str = "alice",
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST raw bytes to a proxy path (`/v1/...`); (status, parsed JSON body)."""
    request = urllib.request.Request(
        live.base_url.removesuffix("/v1") + path, data=data, method="POST",
        headers={"Authorization": f"Bearer {live.key(key)}",
                 "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def exchange(live: LiveProxy, data: bytes) -> bytes:
    """Send raw bytes on a fresh connection; what came back before the proxy closed it."""
    port = int(live.base_url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received and received.endswith(b"}"):
                break
    return received


def assert_openai_error(status: int, payload: Any, expected: int, *parts: str) -> None:
    assert status == expected, payload
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    for part in parts:
        assert part in payload["error"]["message"]


def nested(depth: int) -> bytes:
    """A chat body whose metadata value nests arrays so that the body is `depth` deep."""
    inner = b"[" * (depth - 2) + b"]" * (depth - 2)
    return b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"metadata":{"a":' \
        + inner + b"}}"


@pytest.mark.parametrize("role", [5, ["user"], {"user": 1}, True])
def test_a_role_that_is_not_a_string_is_a_400(live: LiveProxy, role: Any) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": role, "content": "hi"}]}
    status, payload = send(live, "/v1/chat/completions", orjson.dumps(body))
    assert_openai_error(status, payload, 400, "messages[0].role")
    assert payload["error"]["param"] == "messages[0].role"
    assert not live.fake.received


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "user", "content": [{"type": "image_url", "image_url": "https://x/cat.png"}]},
     "messages[0].content[0].image_url"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]},
     "messages[0].content[0].image_url"),
    ({"role": "user", "content": [{"type": "text", "text": ["hi"]}]},
     "messages[0].content[0].text"),
    ({"role": "user", "content": ["hi"]}, "messages[0].content[0]"),
    ({"role": "assistant", "content": None,
      "tool_calls": [{"id": "c1", "type": "function", "function": "get_weather"}]},
     "messages[0].tool_calls[0].function"),
    ({"role": "assistant", "content": None,
      "tool_calls": [{"id": "c1", "type": "function",
                      "function": {"name": "f", "arguments": {"city": "Oslo"}}}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"role": "assistant", "content": None, "function_call": "get_weather"},
     "messages[0].function_call"),
    ({"role": "user", "content": "hi", "name": 7}, "messages[0].name"),
])
def test_malformed_content_parts_and_tool_calls_are_a_400(live: LiveProxy,
                                                          message: dict[str, Any],
                                                          param: str) -> None:
    body = {"model": "gpt-4o", "messages": [message, *USER]}
    status, payload = send(live, "/v1/chat/completions", orjson.dumps(body))
    assert_openai_error(status, payload, 400, param)
    assert payload["error"]["param"] == param
    assert not live.fake.received


@pytest.mark.parametrize(("field", "value", "param"), [
    ("tools", [{"type": "function", "function": "get_weather"}], "tools[0].function"),
    ("tool_choice", {"type": "function", "function": "get_weather"}, "tool_choice.function"),
    ("functions", [{"description": "no name"}], "functions[0]"),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": "{}"}}],
     "tools[0].function.parameters"),
    ("stop", ["ok", 3], "stop"),
    ("user", {"id": 1}, "user"),
])
def test_malformed_tool_definitions_and_options_are_a_400(live: LiveProxy, field: str,
                                                          value: Any, param: str) -> None:
    status, payload = send(live, "/v1/chat/completions", orjson.dumps({**CHAT, field: value}))
    assert_openai_error(status, payload, 400, param)
    assert not live.fake.received


def test_a_string_tool_call_in_history_the_trim_stage_summarizes_is_a_400(
        tmp_path: Path) -> None:
    """Regression: the summary of older turns read `function.get` on a string (500)."""
    history: list[dict[str, Any]] = [{"role": "user", "content": f"turn {i} " * 50}
                                     for i in range(40)]
    history[1:1] = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": "lookup"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "result"}]
    with LiveProxy(tmp_path, rules=DEFAULT_RULES) as live:
        status, payload = send(live, "/v1/chat/completions",
                               orjson.dumps({"model": "gpt-4o", "messages": history}))
        assert_openai_error(status, payload, 400, "messages[1].tool_calls[0].function")
        assert not live.fake.received


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_token_limits_near_2_63_are_refused_before_upstream_is_called(live: LiveProxy,
                                                                      field: str) -> None:
    """Regression: max_tokens 2^63-1 with n=3 reached upstream, then the trace overflowed
    orjson's 64-bit integers: a 500 for a billed call with no ledger row."""
    with pytest.raises(openai.BadRequestError) as err:
        live.client().chat.completions.create(**CHAT, n=3, **{field: 2**63 - 1})
    assert err.value.body["param"] == field  # type: ignore[index]
    assert "2147483647" in err.value.message
    assert not live.fake.received
    completion = live.client().chat.completions.create(**CHAT, n=3, **{field: 2**31 - 1})
    assert len(completion.choices) == 3
    assert live.ledger_rows()[-1]["max_tokens"] == 2**31 - 1


@pytest.mark.parametrize(("field", "value"), [
    ("n", 129), ("n", 2**64), ("seed", 2**63), ("seed", -(2**63) - 1), ("top_logprobs", 21),
    ("max_tokens", 0), ("temperature", 1e308),
])
def test_integer_and_number_fields_out_of_range_are_a_400(live: LiveProxy, field: str,
                                                          value: int) -> None:
    status, payload = send(live, "/v1/chat/completions",
                           json.dumps({**CHAT, field: value}).encode())  # ints beyond 64 bits
    assert_openai_error(status, payload, 400, f"'{field}'")
    assert not live.fake.received


def test_json_nested_deeper_than_the_limit_is_a_400_on_every_endpoint(live: LiveProxy) -> None:
    """orjson reads 1024 levels but writes 255: a body between the two used to be a 500."""
    status, _ = send(live, "/v1/chat/completions", nested(MAX_JSON_DEPTH))
    assert status == 200
    for depth in (MAX_JSON_DEPTH + 1, 300, 1000):
        status, payload = send(live, "/v1/chat/completions", nested(depth))
        assert_openai_error(status, payload, 400, "nested too deeply")
    deep_key = b'{"name": "deep", "metadata": ' + b"[" * 300 + b"]" * 300 + b"}"
    for path, key in (("/v1/proxy/keys", "admin"), ("/v1/threads", "alice")):
        status, payload = send(live, path, deep_key, key=key)
        assert_openai_error(status, payload, 400, "nested too deeply")
    assert len(live.fake.received) == 1


def test_threads_refuse_a_string_tool_choice_function_and_image_url(live: LiveProxy) -> None:
    client = live.client()
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create()
    status, payload = send(live, f"/v1/threads/{thread.id}/runs", orjson.dumps(
        {"assistant_id": assistant.id, "tool_choice": {"type": "function", "function": "f"}}),
        headers={"OpenAI-Beta": "assistants=v2"})
    assert_openai_error(status, payload, 400, "tool_choice")
    status, payload = send(live, f"/v1/threads/{thread.id}/messages", orjson.dumps(
        {"role": "user", "content": [{"type": "image_url", "image_url": "https://x/a.png"}]}),
        headers={"OpenAI-Beta": "assistants=v2"})
    assert_openai_error(status, payload, 400, "content[0]")
    status, payload = send(live, f"/v1/threads/{thread.id}/runs", orjson.dumps(
        {"assistant_id": assistant.id, "max_completion_tokens": 2**63 - 1}),
        headers={"OpenAI-Beta": "assistants=v2"})
    assert_openai_error(status, payload, 400, "max_completion_tokens")


@pytest.mark.parametrize(("encoding", "compress"), [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda data: zlib.compress(data, wbits=-15)),  # raw deflate, as some send it
    ("identity", lambda data: data),
])
def test_compressed_bodies_are_decoded(live: LiveProxy, encoding: str, compress: Any) -> None:
    status, payload = send(live, "/v1/chat/completions", compress(orjson.dumps(CHAT)),
                           headers={"Content-Encoding": encoding})
    assert status == 200, payload
    assert live.fake.received[-1]["messages"] == USER


@pytest.mark.parametrize(("encoding", "data", "expected", "part"), [
    ("gzip", b"not gzip at all", 400, "not valid gzip"),
    ("gzip", gzip.compress(orjson.dumps(CHAT))[:-12], 400, "truncated gzip"),
    ("deflate", b"\x78\x9c garbage", 400, "not valid deflate"),
    ("br", b"\x0b\x02\x80{}\x03", 415, "'br' is not supported"),
    ("zstd", b"\x28\xb5\x2f\xfd", 415, "'zstd' is not supported"),
    ("gzip, br", b"x", 415, "is not supported"),
])
def test_bad_or_unsupported_content_encodings_get_openai_errors(
        live: LiveProxy, encoding: str, data: bytes, expected: int, part: str) -> None:
    status, payload = send(live, "/v1/chat/completions", data,
                           headers={"Content-Encoding": encoding})
    assert_openai_error(status, payload, expected, part)
    assert not live.fake.received


def test_a_gzip_body_that_inflates_past_the_limit_is_a_413(tmp_path: Path) -> None:
    body = orjson.dumps({**CHAT, "metadata": {"pad": " " * 100_000}})
    with LiveProxy(tmp_path, config={"server": {"max_body_bytes": 65_536}}) as live:
        status, payload = send(live, "/v1/chat/completions", gzip.compress(body),
                               headers={"Content-Encoding": "gzip"})
    assert_openai_error(status, payload, 413, "max_body_bytes")


def test_an_authorization_header_that_is_not_utf8_is_a_401(live: LiveProxy) -> None:
    body = orjson.dumps(CHAT)
    reply = exchange(live, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                           b"Authorization: Bearer sk-\xff\xfe\xfd-key\r\n"
                           b"Content-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body) + body)
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")
    assert orjson.loads(payload)["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("line", [
    b"Authorization Bearer sk-test-alice-secret",  # no colon
    b"Authorization: Bearer sk-test-alice\x01secret",  # control character
])
def test_a_malformed_header_line_is_logged_as_one_line_without_its_contents(
        live: LiveProxy, caplog: pytest.LogCaptureFixture, line: bytes) -> None:
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        reply = exchange(live, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + line
                         + b"\r\nContent-Length: 2\r\n\r\n{}")
    assert reply.startswith(b"HTTP/1.0 400") or reply.startswith(b"HTTP/1.1 400")
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(records) == 1
    assert records[0].levelno <= logging.INFO and records[0].exc_info is None
    assert records[0].getMessage().endswith(": BadHttpMessage")
    assert "sk-test" not in caplog.text and "secret" not in caplog.text


def test_a_body_still_trickling_in_after_the_timeout_gets_408(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, config={"server": {"body_timeout_seconds": 0.3}}) as live:
        reply = exchange(live, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                               b"Authorization: Bearer " + live.key().encode() + b"\r\n"
                               b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
                               b"\r\n{\"model\": ")
        assert not live.fake.received
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    error = orjson.loads(payload)["error"]
    assert error["code"] == "request_timeout" and "body_timeout_seconds" in error["message"]


def test_long_messages_skip_the_text_analyses_unread(tmp_path: Path) -> None:
    """A greeting or a question 100k characters long is no canned reply or cacheable
    question: the stages say so without scanning it (it used to block the loop for s)."""
    long_thanks = "thanks " * 15_000
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    with LiveProxy(tmp_path, rules=DEFAULT_RULES) as live:
        report = live.client().post("/proxy/explain", cast_to=object, body={
            "model": "gpt-4o", "tools": [weather],
            "messages": [{"role": "assistant", "content": "Shall I check? " * 20_000},
                         {"role": "user", "content": long_thanks}]})
    decisions = {d["stage"]: d for d in report["trace"]}  # type: ignore[index]
    too_long = f"longer than {MAX_ANALYZED_CHARS} characters"
    assert decisions["patterns"]["action"] == "skip" and too_long in decisions["patterns"]["why"]
    assert decisions["semantic_cache"]["action"] == "skip"
    assert too_long in decisions["semantic_cache"]["why"]
    assert decisions["tools"]["action"] == "kept" and "not searched" in decisions["tools"]["why"]


def test_a_trace_value_orjson_cannot_write_still_makes_a_ledger_row() -> None:
    ctx = make_context({"model": "gpt-4o", "messages": USER, "max_tokens": 2**64})
    ctx.decide("budget", "reserve", "huge", tokens=3 * (2**63 - 1), kinds={"a"})
    entry = ledger_entry(ctx, None, PriceTable(), status=200)
    assert json.loads(entry.trace)[0]["tokens"] == 3 * (2**63 - 1)
    assert entry.max_tokens is None  # beyond sqlite's 64-bit integers: not recorded


@pytest.mark.parametrize(("depth", "refused"), [(MAX_JSON_DEPTH, False),
                                                (MAX_JSON_DEPTH + 1, True)])
def test_depth_counts_objects_and_arrays_alike(depth: int, refused: bool) -> None:
    value: Any = {}
    for level in range(depth - 2):
        value = [value] if level % 2 else {"k": value, "flat": list(range(50))}
    value = {"body": value}
    raw = orjson.dumps(value)
    if refused:
        with pytest.raises(InvalidRequest, match="nested too deeply"):
            parse_json_object(raw)
    else:
        assert parse_json_object(raw) == value


@pytest.mark.parametrize(("assistant", "after_question"), [
    ("Want a plan for tomorrow? 🙂🙂", True),
    ("Shall I? " + "!" * 30_000 + "a", False),  # quadratic for the old regex: minutes
    ("x" * 1_000_000 + " Ready?", True),
    ("Done. Good job!!", False),
])
def test_after_question_reads_the_end_of_a_message_in_linear_time(assistant: str,
                                                                  after_question: bool) -> None:
    ctx = make_context({"model": "gpt-4o", "messages": [
        {"role": "assistant", "content": assistant}, {"role": "user", "content": "ok"}]})
    assert RequestFacts(ctx, "UTC").after_question is after_question
