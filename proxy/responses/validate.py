"""Validation of `POST /v1/responses` bodies into OpenAI-style 400s naming the parameter.

It checks what the translation to chat completions reads; what needs the
upstream (see `upstream_state.py`) was set aside before. Unknown fields pass.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.api.validate import validate_model
from proxy.errors import InvalidRequest
from proxy.responses.upstream_state import item_type
from proxy.threads.params import bounded, metadata, typed

_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
INPUT_ROLES = ("user", "assistant", "system", "developer")
TOOL_CHOICES = ("none", "auto", "required")
TEXT_FORMATS = ("text", "json_object", "json_schema")
MIN_OUTPUT_TOKENS = 16


def _invalid(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _required_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = typed(obj, key, str, where)
    if value is None:
        raise _invalid(f"Missing required parameter: '{where}{key}'.", f"{where}{key}",
                       "missing_required_parameter")
    return str(value)


def _part(part: Any, param: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise _invalid(f"Invalid '{param}': expected a content part object with a 'type'.",
                       param, "invalid_type")
    kind = part["type"]
    where = f"{param}."
    if kind in ("input_text", "output_text"):
        _required_str(part, "text", where)
    elif kind == "refusal":
        _required_str(part, "refusal", where)
    elif kind == "input_image":
        _required_str(part, "image_url", where)
    elif kind == "input_file" and not (part.get("file_data") or part.get("file_id")):
        raise _invalid(f"Invalid '{param}': an input_file needs file_data or file_id.", param)
    elif kind == "input_audio":
        typed(part, "input_audio", dict, where)


def _message(item: dict[str, Any], param: str) -> None:
    role = item.get("role")
    if role not in INPUT_ROLES:
        raise _invalid(f"Invalid value for '{param}.role': {role!r}. Supported values are: "
                       f"{list(INPUT_ROLES)}.", f"{param}.role")
    content = item.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid(f"Invalid type for '{param}.content': expected a string or an array "
                       "of content parts.", f"{param}.content", "invalid_type")
    for j, part in enumerate(content):
        _part(part, f"{param}.content[{j}]")


def _function_output(item: dict[str, Any], param: str) -> None:
    _required_str(item, "call_id", f"{param}.")
    output = item.get("output")
    if isinstance(output, str):
        return
    if not isinstance(output, list):
        raise _invalid(f"Invalid type for '{param}.output': expected a string or an array of "
                       "content parts.", f"{param}.output", "invalid_type")
    for j, part in enumerate(output):
        if not isinstance(part, dict) or part.get("type") != "input_text":
            raise _invalid(f"Invalid '{param}.output[{j}]': over chat completions a function "
                           "output can only hold input_text parts.", f"{param}.output[{j}]")
        _required_str(part, "text", f"{param}.output[{j}].")


def _input(value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _invalid("Invalid type for 'input': expected a string or an array of input "
                       "items.", "input", "invalid_type")
    for i, item in enumerate(value):
        param = f"input[{i}]"
        kind = item_type(item)
        if kind is None:
            raise _invalid(f"Invalid '{param}': expected an input item object with a 'type' "
                           "(or a message with a 'role').", param, "invalid_type")
        if kind == "message":
            _message(item, param)
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                _required_str(item, key, f"{param}.")
        elif kind == "function_call_output":
            _function_output(item, param)


def _tools(value: Any) -> None:
    for i, tool in enumerate(typed({"tools": value}, "tools", list) or []):
        param = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _invalid(f"Invalid '{param}': expected an object with a 'type'.", param,
                           "invalid_type")
        if not _FUNCTION_NAME.match(str(tool.get("name") or "")):
            raise _invalid(f"Invalid '{param}.name': expected 1 to 64 letters, digits, "
                           "underscores or dashes.", f"{param}.name")
        typed(tool, "parameters", dict, f"{param}.")
        typed(tool, "description", str, f"{param}.")
        typed(tool, "strict", bool, f"{param}.")


def _tool_choice(value: Any) -> None:
    if value is None or value in TOOL_CHOICES:
        return
    if isinstance(value, dict) and value.get("type") == "function" \
            and isinstance(value.get("name"), str):
        return
    if isinstance(value, dict) and value.get("type") == "allowed_tools" \
            and value.get("mode") in ("auto", "required") and isinstance(value.get("tools"), list):
        return
    raise _invalid("Invalid 'tool_choice': expected 'none', 'auto', 'required', "
                   "{\"type\": \"function\", \"name\": ...} or {\"type\": \"allowed_tools\", "
                   "\"mode\": ..., \"tools\": [...]}.", "tool_choice")


def _text(body: dict[str, Any]) -> None:
    text = typed(body, "text", dict)
    fmt = typed(text or {}, "format", dict, "text.")
    if fmt is None:
        return
    if fmt.get("type") not in TEXT_FORMATS:
        raise _invalid(f"Invalid value for 'text.format.type': {fmt.get('type')!r}. Supported "
                       f"values are: {list(TEXT_FORMATS)}.", "text.format.type")
    if fmt["type"] == "json_schema":
        _required_str(fmt, "name", "text.format.")
        if typed(fmt, "schema", dict, "text.format.") is None:
            raise _invalid("Missing required parameter: 'text.format.schema'.",
                           "text.format.schema", "missing_required_parameter")


def validate_request(body: dict[str, Any]) -> None:
    """Raise InvalidRequest for a Responses body OpenAI would refuse."""
    validate_model(body)
    if body.get("input") in (None, []) and not body.get("previous_response_id"):
        raise _invalid("Missing required parameter: 'input'.", "input",
                       "missing_required_parameter")
    if body.get("input") is not None:
        _input(body["input"])
    for key in ("instructions", "previous_response_id", "user", "safety_identifier",
                "prompt_cache_key", "service_tier"):
        typed(body, key, str)
    for key in ("stream", "store", "parallel_tool_calls"):
        typed(body, key, bool)
    bounded(body, "temperature", float, 0, 2)
    bounded(body, "top_p", float, 0, 1)
    bounded(body, "max_output_tokens", int, MIN_OUTPUT_TOKENS, None)
    metadata(body)
    _tools(body.get("tools"))
    _tool_choice(body.get("tool_choice"))
    _text(body)
    reasoning = typed(body, "reasoning", dict)
    typed(reasoning or {}, "effort", str, "reasoning.")
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise _invalid(f"Invalid value for 'truncation': {body['truncation']!r}. Supported "
                       "values are: ['auto', 'disabled'].", "truncation")
