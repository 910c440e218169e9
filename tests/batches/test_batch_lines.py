"""Batch input parsing and output merging (proxy/batches/lines.py)."""

from __future__ import annotations

import orjson
import pytest

from proxy.batches.lines import answered_line, merge_output, parse_input
from proxy.errors import InvalidRequest

URL = "/v1/chat/completions"


def raw(custom_id: str) -> bytes:
    """An input line."""
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": URL,
                         "body": {"model": "m", "messages": []}})


def upstream_line(custom_id: str) -> bytes:
    """An upstream output line."""
    return orjson.dumps({"id": "r", "custom_id": custom_id,
                         "response": {"status_code": 200, "body": {}}, "error": None})


def test_input_lines_keep_their_numbers_and_bytes_past_blank_lines() -> None:
    lines = parse_input(raw("a") + b"\n\n" + raw("b") + b"\n", URL)
    assert [(x.number, x.custom_id, x.raw) for x in lines] == [(1, "a", raw("a")),
                                                               (3, "b", raw("b"))]


@pytest.mark.parametrize(("data", "problem"), [
    (b"[1]", "Line 1 of the input file is not a JSON object"),
    (orjson.dumps({"method": "POST", "url": URL, "body": {}}), "has no 'custom_id'"),
    (raw("a").replace(b'"POST"', b'"GET"'), "must have 'method': 'POST'"),
    (raw("a").replace(b'"body":{"model":"m","messages":[]}', b'"body":1'), "no 'body' object"),
    (raw("a").replace(b'"messages"', b'"stream":true,"messages"'), "asks for 'stream'"),
])
def test_bad_input_lines_are_named(data: bytes, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        parse_input(data, URL)


def test_output_follows_input_order_and_leaves_out_failed_lines() -> None:
    answered = {"b": answered_line("b", "req", {"object": "chat.completion"})}
    upstream = upstream_line("d") + b"\n" + upstream_line("a") + b"\n"
    merged = [orjson.loads(x)["custom_id"]
              for x in merge_output(["a", "b", "c", "d"], answered, upstream).splitlines()]
    assert merged == ["a", "b", "d"]  # c failed upstream: it is in the error file


def test_upstream_lines_the_input_did_not_have_come_last() -> None:
    merged = merge_output(["a"], {}, upstream_line("x") + b"\n" + upstream_line("a"))
    assert [orjson.loads(x)["custom_id"] for x in merged.splitlines()] == ["a", "x"]
