"""Validation of Assistants API request bodies into clean fields, or OpenAI-style 400s."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from proxy.errors import InvalidRequest

SUPPORTED_TOOL_TYPES = ("function",)
INT32_MAX = 2**31 - 1  # the largest token count a run accepts, as OpenAI's
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TYPE_LABELS = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
                dict: "an object", list: "an array"}


def _invalid(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def typed(body: dict[str, Any], key: str, kind: type, where: str = "") -> Any:
    """body[key] when absent/null or of `kind` (int accepted as float), else a 400."""
    value = body.get(key)
    param = f"{where}{key}"
    if value is None:
        return None
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise _invalid(f"Invalid type for '{param}': expected {_TYPE_LABELS[kind]}, but got "
                       f"{type(value).__name__} instead.", param, "invalid_type")
    return value


def required_str(body: dict[str, Any], key: str, where: str = "") -> str:
    """A required non-empty string field."""
    value = typed(body, key, str, where)
    if not value:
        raise _invalid(f"Missing required parameter: '{where}{key}'.", f"{where}{key}",
                       "missing_required_parameter")
    return str(value)


def bounded(body: dict[str, Any], key: str, kind: type, low: float, high: float | None) -> Any:
    """A number field within [low, high]."""
    value = typed(body, key, kind)
    if value is not None and (value < low or (high is not None and value > high)):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _invalid(f"Invalid value for '{key}': must be {bounds}, got {value}.", key)
    return value


def metadata(body: dict[str, Any], where: str = "") -> dict[str, str] | None:
    """Up to 16 string pairs (keys <= 64 chars, values <= 512 chars)."""
    value = typed(body, "metadata", dict, where)
    if value is None:
        return None
    param = f"{where}metadata"
    if len(value) > 16:
        raise _invalid(f"Invalid '{param}': at most 16 keys, got {len(value)}.", param)
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise _invalid(f"Invalid '{param}.{key}': keys are strings of at most 64 "
                           "characters, values strings of at most 512.", f"{param}.{key}")
    return dict(value)


def tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Function tools; file_search / code_interpreter are refused (no files here)."""
    value = typed(body, "tools", list)
    if value is None:
        return None
    if len(value) > 128:
        raise _invalid(f"Invalid 'tools': at most 128 tools, got {len(value)}.", "tools")
    checked = []
    for i, tool in enumerate(value):
        param = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in SUPPORTED_TOOL_TYPES:
            raise InvalidRequest(
                f"Invalid '{param}.type': tools of type {kind!r} are not supported by this "
                "proxy, which runs assistants over chat completions without files or code "
                f"execution. Supported tool types: {list(SUPPORTED_TOOL_TYPES)}.",
                param=f"{param}.type", code="unsupported_tool_type")
        function = typed(tool, "function", dict, f"{param}.")
        if function is None or not _FUNCTION_NAME.match(str(function.get("name") or "")):
            raise _invalid(f"Invalid '{param}.function.name': expected 1 to 64 letters, digits, "
                           "underscores or dashes.", f"{param}.function.name")
        typed(function, "parameters", dict, f"{param}.function.")
        typed(function, "description", str, f"{param}.function.")
        checked.append({"type": "function", "function": dict(function)})
    return checked


def tool_resources(body: dict[str, Any]) -> dict[str, Any] | None:
    """Only empty tool resources: files belong to tools this proxy does not serve."""
    value = typed(body, "tool_resources", dict)
    if value and any(value.values()):
        raise InvalidRequest("Invalid 'tool_resources': file_search and code_interpreter "
                             "resources are not supported by this proxy (only function "
                             "tools are).", param="tool_resources",
                             code="unsupported_tool_type")
    return {} if value is not None else None


def response_format(body: dict[str, Any]) -> Any:
    """"auto" or a {"type": "text" | "json_object" | "json_schema", ...} object."""
    value = body.get("response_format")
    if value is None or value == "auto":
        return value
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object",
                                                               "json_schema"):
        raise _invalid("Invalid 'response_format': expected \"auto\" or an object whose type "
                       "is 'text', 'json_object' or 'json_schema'.", "response_format")
    return value


def tool_choice(body: dict[str, Any]) -> Any:
    """"none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}."""
    value = body.get("tool_choice")
    if value is None or value in ("none", "auto", "required"):
        return value
    function = value.get("function") if isinstance(value, dict) else None
    if (isinstance(value, dict) and value.get("type") == "function"
            and isinstance(function, dict) and isinstance(function.get("name"), str)):
        return value
    raise _invalid("Invalid 'tool_choice': expected 'none', 'auto', 'required' or "
                   "{\"type\": \"function\", \"function\": {\"name\": ...}} (only function "
                   "tools are supported).", "tool_choice")


def truncation_strategy(body: dict[str, Any]) -> dict[str, Any] | None:
    """{"type": "auto"} or {"type": "last_messages", "last_messages": N >= 1}."""
    value = typed(body, "truncation_strategy", dict)
    if value is None:
        return None
    kind = value.get("type")
    last = value.get("last_messages")
    if kind == "auto":
        return {"type": "auto", "last_messages": None}
    if kind == "last_messages" and isinstance(last, int) and not isinstance(last, bool) \
            and last >= 1:
        return {"type": "last_messages", "last_messages": last}
    raise _invalid("Invalid 'truncation_strategy': expected {\"type\": \"auto\"} or "
                   "{\"type\": \"last_messages\", \"last_messages\": N} with N >= 1.",
                   "truncation_strategy")


def _content_part(part: Any, param: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": {"value": part["text"], "annotations": []}}
    image = part.get("image_url") if kind == "image_url" else None
    if isinstance(image, dict) and isinstance(image.get("url"), str):
        return {"type": "image_url", "image_url": {"url": image["url"],
                                                   "detail": image.get("detail") or "auto"}}
    if kind == "image_file":
        raise _invalid(f"Invalid '{param}': image_file content needs the Files API, which this "
                       "proxy does not serve; send the image as an image_url.", param)
    raise _invalid(f"Invalid '{param}': expected a text or image_url content part.", param)


def message(body: Any, where: str = "") -> dict[str, Any]:
    """A message to add: role, content blocks, metadata (attachments refused)."""
    if not isinstance(body, dict):
        raise _invalid(f"Invalid type for '{where or 'body'}': expected an object.",
                       where or "body", "invalid_type")
    role = body.get("role")
    if role not in ("user", "assistant"):
        raise _invalid(f"Invalid value for '{where}role': expected 'user' or 'assistant', "
                       f"got {role!r}.", f"{where}role")
    content = body.get("content")
    if isinstance(content, str):
        blocks = [{"type": "text", "text": {"value": content, "annotations": []}}]
    elif isinstance(content, list) and content:
        blocks = [_content_part(p, f"{where}content[{i}]") for i, p in enumerate(content)]
    else:
        raise _invalid(f"Invalid '{where}content': expected a string or a non-empty array of "
                       "content parts.", f"{where}content")
    if body.get("attachments"):
        raise InvalidRequest(f"Invalid '{where}attachments': attachments need file_search or "
                             "code_interpreter, which this proxy does not serve.",
                             param=f"{where}attachments", code="unsupported_tool_type")
    return {"role": role, "content": blocks, "metadata": metadata(body, where) or {}}


def messages(body: dict[str, Any], key: str, where: str = "") -> list[dict[str, Any]]:
    """A list of messages to add (empty when absent)."""
    value = typed(body, key, list, where)
    return [message(m, f"{where}{key}[{i}].") for i, m in enumerate(value or [])]


def list_query(query: Any) -> dict[str, Any]:
    """limit (1..100, default 20), order (asc|desc, default desc), after, before."""
    raw_limit = query.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise _invalid(f"Invalid 'limit': expected an integer between 1 and 100, got "
                       f"{raw_limit!r}.", "limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise _invalid(f"Invalid 'order': expected 'asc' or 'desc', got {order!r}.", "order")
    return {"limit": limit, "order": order, "after": query.get("after") or None,
            "before": query.get("before") or None}


def assistant_fields(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """Fields of an assistant create (model required) or modify (only the given ones)."""
    fields: dict[str, Any] = {}
    if creating or "model" in body:
        fields["model"] = required_str(body, "model")
    for key in ("name", "description", "instructions", "reasoning_effort"):
        if key in body:
            fields[key] = typed(body, key, str)
    checks: dict[str, Callable[[dict[str, Any]], Any]] = {
        "tools": tools, "metadata": metadata, "tool_resources": tool_resources,
        "response_format": response_format,
        "temperature": lambda b: bounded(b, "temperature", float, 0, 2),
        "top_p": lambda b: bounded(b, "top_p", float, 0, 1)}
    for key, check in checks.items():
        if key in body:
            fields[key] = check(body)
    return {k: v for k, v in fields.items() if v is not None or k in body}


def run_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Fields of a run create: assistant_id and the overrides of the assistant's settings."""
    fields = {
        "assistant_id": required_str(body, "assistant_id"),
        "model": typed(body, "model", str),
        "instructions": typed(body, "instructions", str),
        "additional_instructions": typed(body, "additional_instructions", str),
        "additional_messages": messages(body, "additional_messages"),
        "tools": tools(body),
        "metadata": metadata(body),
        "temperature": bounded(body, "temperature", float, 0, 2),
        "top_p": bounded(body, "top_p", float, 0, 1),
        "max_prompt_tokens": bounded(body, "max_prompt_tokens", int, 1, INT32_MAX),
        "max_completion_tokens": bounded(body, "max_completion_tokens", int, 1, INT32_MAX),
        "truncation_strategy": truncation_strategy(body),
        "tool_choice": tool_choice(body),
        "response_format": response_format(body),
        "reasoning_effort": typed(body, "reasoning_effort", str),
        "stream": bool(typed(body, "stream", bool)),
    }
    parallel = typed(body, "parallel_tool_calls", bool)
    fields["parallel_tool_calls"] = True if parallel is None else parallel
    tool_resources(body)
    return fields


def tool_outputs(body: dict[str, Any]) -> dict[str, str]:
    """tool_call_id -> output of a submit_tool_outputs body."""
    value = typed(body, "tool_outputs", list)
    if not value:
        raise _invalid("Missing required parameter: 'tool_outputs'.", "tool_outputs",
                       "missing_required_parameter")
    outputs: dict[str, str] = {}
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("tool_call_id"), str):
            raise _invalid(f"Invalid 'tool_outputs[{i}]': expected an object with a "
                           "'tool_call_id' and an 'output'.", f"tool_outputs[{i}]")
        outputs[item["tool_call_id"]] = str(typed(item, "output", str, f"tool_outputs[{i}].")
                                            or "")
    return outputs
