"""The Batch API's JSONL lines: the input file parsed and checked, output lines built and
merged in the input's order.

An input line is `{"custom_id", "method", "url", "body"}`; an output line is
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.errors import InvalidRequest

PARAM = "input_file_id"


@dataclass(frozen=True, slots=True)
class InputLine:
    """One request of a batch input file."""

    number: int  # 1-based line number in the file
    custom_id: str
    body: dict[str, Any]
    raw: bytes  # the line as the client wrote it


def _bad_line(number: int, problem: str) -> InvalidRequest:
    return InvalidRequest(f"Line {number} of the input file {problem}.", param=PARAM,
                          code="invalid_batch_line")


def _parse_line(number: int, raw: bytes, endpoint: str) -> InputLine:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad_line(number, "is not valid JSON") from None
    if not isinstance(line, dict):
        raise _bad_line(number, "is not a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _bad_line(number, "has no 'custom_id' string")
    if line.get("method") != "POST":
        raise _bad_line(number, "must have 'method': 'POST'")
    if line.get("url") != endpoint:
        raise _bad_line(number, f"has 'url' {line.get('url')!r}, but the batch's endpoint "
                        f"is {endpoint!r}")
    if not isinstance(line.get("body"), dict):
        raise _bad_line(number, "has no 'body' object")
    if line["body"].get("stream"):
        raise _bad_line(number, "asks for 'stream', which batches do not support")
    return InputLine(number, custom_id, line["body"], raw)


def parse_input(data: bytes, endpoint: str) -> list[InputLine]:
    """The lines of a batch input file; InvalidRequest naming the first bad line."""
    lines: list[InputLine] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        line = _parse_line(number, raw, endpoint)
        if line.custom_id in seen:
            raise _bad_line(number, f"repeats custom_id {line.custom_id!r}")
        seen.add(line.custom_id)
        lines.append(line)
    if not lines:
        raise InvalidRequest("The input file has no requests.", param=PARAM,
                             code="invalid_batch_file")
    return lines


def with_body(line: InputLine, body: Mapping[str, Any]) -> bytes:
    """The line re-serialized with a new body (its other fields as the client wrote them)."""
    return orjson.dumps({**orjson.loads(line.raw), "body": body})


def group_by_model(lines: Iterable[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    """(model, line) pairs grouped by model: one upstream batch per model, the models in
    the order they first appear and each group's lines in input order."""
    groups: dict[str, list[bytes]] = {}
    for model, raw in lines:
        groups.setdefault(model, []).append(raw)
    return groups


def answered_line(custom_id: str, request_id: str, completion: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """An output line for a request the proxy answered itself."""
    return {"id": "batch_req_" + secrets.token_hex(12), "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": completion},
            "error": None}


def jsonl(lines: Iterable[bytes]) -> bytes:
    """Lines joined into a JSONL file (newline-terminated; empty for no lines)."""
    return b"".join(line + b"\n" for line in lines)


def find_line(data: bytes, custom_id: str) -> dict[str, Any] | None:
    """The output (or error) line for `custom_id` in a JSONL file, if there is one."""
    for raw in data.splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(line, dict) and line.get("custom_id") == custom_id:
            return line
    return None


def merge_output(order: list[str], answered: Mapping[str, Any], upstream: bytes) -> bytes:
    """The output file: each custom_id in input order, answered by the proxy or by the
    upstream's output (ids in neither, e.g. failed lines, are left out; upstream lines
    whose ids the input did not have come last)."""
    expected = set(order) - set(answered)
    from_upstream: dict[str, bytes] = {}
    unknown: list[bytes] = []
    for raw in upstream.splitlines():
        if not raw.strip():
            continue
        try:
            custom_id = orjson.loads(raw).get("custom_id")
        except (orjson.JSONDecodeError, AttributeError):
            custom_id = None
        if isinstance(custom_id, str) and custom_id in expected:
            from_upstream[custom_id] = raw
        else:
            unknown.append(raw)
    merged = (orjson.dumps(answered[c]) if c in answered else from_upstream.get(c)
              for c in order)
    return jsonl([*(line for line in merged if line is not None), *unknown])
