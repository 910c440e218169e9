"""Validation of chat.completions request bodies into clear OpenAI-style 400s.

Everything the pipeline reads from a body is checked here for the shape OpenAI
accepts, so that no stage meets a value of an unexpected type or size: a request
is refused before anything is called, billed or recorded. Unknown fields and
unknown kinds of content parts, tools and tool calls pass untouched.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import InvalidRequest

MAX_MODEL_CHARS = 256
MAX_JSON_DEPTH = 64  # nesting of objects and arrays in a body; orjson writes only 255
INT32_MAX = 2**31 - 1
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# field -> (accepted types, label, lower bound, upper bound)
_NUMERIC: dict[str, tuple[tuple[type, ...], str, float, float]] = {
    "temperature": ((int, float), "a number", 0, 2),
    "top_p": ((int, float), "a number", 0, 1),
    "n": ((int,), "an integer", 1, 128),
    "max_tokens": ((int,), "an integer", 1, INT32_MAX),
    "max_completion_tokens": ((int,), "an integer", 1, INT32_MAX),
    "presence_penalty": ((int, float), "a number", -2, 2),
    "frequency_penalty": ((int, float), "a number", -2, 2),
    "seed": ((int,), "an integer", -(2**63), 2**63 - 1),
    "top_logprobs": ((int,), "an integer", 0, 20),
}
# top-level field -> (accepted types, label)
_TYPED: dict[str, tuple[tuple[type, ...], str]] = {
    "stream": ((bool,), "a boolean"),
    "stream_options": ((dict,), "an object"),
    "tools": ((list,), "an array"),
    "functions": ((list,), "an array"),
    "metadata": ((dict,), "an object"),
    "tool_choice": ((str, dict), "a string or an object"),
    "function_call": ((str, dict), "a string or an object"),
    "response_format": ((dict,), "an object"),
    "logprobs": ((bool,), "a boolean"),
    "parallel_tool_calls": ((bool,), "a boolean"),
    "logit_bias": ((dict,), "an object"),
    "stop": ((str, list), "a string or an array of strings"),
    "user": ((str,), "a string"),
}
# content part type -> (the field holding its payload, its type, label)
_PARTS: dict[str, tuple[str, type, str]] = {
    "text": ("text", str, "a string"),
    "image_url": ("image_url", dict, "an object with a 'url'"),
    "input_audio": ("input_audio", dict, "an object"),
    "file": ("file", dict, "an object"),
    "refusal": ("refusal", str, "a string"),
}


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object nested at most MAX_JSON_DEPTH deep."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            f"aren't using your HTTP library correctly. Parser said: {exc})"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {type(body).__name__}.")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _too_deep(body):
        raise InvalidRequest(f"The JSON body of your request is nested too deeply: at most "
                             f"{MAX_JSON_DEPTH} levels of objects and arrays are accepted.",
                             code="invalid_body")
    return body


def _too_deep(body: dict[str, Any]) -> bool:
    """True when objects and arrays nest more than MAX_JSON_DEPTH levels."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        items = value.values() if isinstance(value, dict) else value
        kinds = set(map(type, items))  # one C-speed pass; most arrays hold no containers
        if dict in kinds or list in kinds:
            stack.extend((item, depth + 1) for item in items
                         if isinstance(item, (dict, list)))
    return False


def _invalid_type(param: str, label: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {label}, but got "
                          f"{type(value).__name__} instead.", param=param, code="invalid_type")


def _invalid_value(param: str, label: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': expected {label}.", param=param,
                          code="invalid_value")


def _check_type(body: dict[str, Any], key: str, kinds: tuple[type, ...], label: str,
                where: str = "") -> None:
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _invalid_type(f"{where}{key}", label, value)


CALL = ("arguments", str, "a string")  # what a function call or definition adds to its name
DEFINITION = ("parameters", dict, "an object")


def _check_function(function: Any, param: str,
                    field: tuple[str, type, str] | None = None) -> None:
    """A `{"name": str, ...}` object, whose `field` (if any) has the type it names."""
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _invalid_value(param, "an object with a string 'name'")
    if field is not None:
        key, kind, label = field
        _check_type(function, key, (kind,), label, f"{param}.")


def _check_content(content: Any, where: str) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid_type(f"{where}.content", "a string or an array of content parts",
                            content)
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid_value(param, "an object with a string 'type'")
        field, kind, label = _PARTS.get(part["type"], (None, object, ""))
        if field is None:
            continue
        value = part.get(field)
        if not isinstance(value, kind) or (isinstance(value, dict) and field == "image_url"
                                           and not isinstance(value.get("url"), str)):
            raise _invalid_value(f"{param}.{field}", label)


def _check_tool_calls(calls: Any, where: str) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise _invalid_type(f"{where}.tool_calls", "an array", calls)
    for j, call in enumerate(calls):
        param = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise _invalid_value(param, "an object")
        _check_type(call, "id", (str,), "a string", f"{param}.")
        _check_type(call, "type", (str,), "a string", f"{param}.")
        if call.get("type", "function") == "function" or "function" in call:
            _check_function(call.get("function"), f"{param}.function", CALL)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of message objects.",
                             param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"Invalid type for '{where}': expected an object.", param=where,
                                 code="invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(f"Invalid value for '{where}.role': {role!r:.100}. Supported "
                                 f"values are: {sorted(ROLES)}.", param=f"{where}.role",
                                 code="invalid_value")
        _check_content(message.get("content"), where)
        for key in ("name", "tool_call_id"):
            _check_type(message, key, (str,), "a string", f"{where}.")
        _check_tool_calls(message.get("tool_calls"), where)
        if message.get("function_call") is not None:
            _check_function(message["function_call"], f"{where}.function_call", CALL)
        if role == "tool" and not message.get("tool_call_id"):
            raise InvalidRequest(f"Missing required parameter: '{where}.tool_call_id'.",
                                 param=f"{where}.tool_call_id", code="missing_required_parameter")


def _check_numbers(body: dict[str, Any]) -> None:
    for key, (kinds, label, low, high) in _NUMERIC.items():
        _check_type(body, key, kinds, label)
        value = body.get(key)
        if value is not None and not low <= value <= high:
            raise InvalidRequest(f"Invalid value for '{key}': must be between {low} and {high}, "
                                 f"got {value}.", param=key, code="invalid_value")


def _check_tools(body: dict[str, Any]) -> None:
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _invalid_value(f"tools[{i}]", "an object with a 'type'")
        if tool["type"] == "function":
            _check_function(tool.get("function"), f"tools[{i}].function", DEFINITION)
    for i, function in enumerate(body.get("functions") or []):
        _check_function(function, f"functions[{i}]", DEFINITION)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        _check_function(choice.get("function"), "tool_choice.function")
    if isinstance(body.get("function_call"), dict):
        _check_function(body["function_call"], "function_call")


def _check_stop(stop: Any) -> None:
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise _invalid_type("stop", "a string or an array of strings", stop)


def validate_model(body: dict[str, Any]) -> str:
    """The body's `model`: a non-empty printable string of bounded length, else a 400."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model",
                             code="missing_required_parameter" if model is None
                             else "invalid_type")
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        raise InvalidRequest(f"Invalid value for 'model': a model name is at most "
                             f"{MAX_MODEL_CHARS} printable characters.", param="model",
                             code="invalid_value")
    return model


def validate_chat_request(body: dict[str, Any]) -> None:
    """Raise InvalidRequest for a body OpenAI would refuse; unknown fields pass untouched."""
    validate_model(body)
    _check_messages(body.get("messages"))
    for key, (kinds, label) in _TYPED.items():
        _check_type(body, key, kinds, label)
    _check_numbers(body)
    _check_tools(body)
    _check_stop(body.get("stop"))
