"""Validation of chat.completions request bodies into clear OpenAI-style 400s."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import InvalidRequest

MAX_MODEL_CHARS = 256
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# field -> (accepted types, label, lower bound, upper bound)
_NUMERIC: dict[str, tuple[tuple[type, ...], str, float | None, float | None]] = {
    "temperature": ((int, float), "a number", 0, 2),
    "top_p": ((int, float), "a number", 0, 1),
    "n": ((int,), "an integer", 1, 128),
    "max_tokens": ((int,), "an integer", 1, None),
    "max_completion_tokens": ((int,), "an integer", 1, None),
    "presence_penalty": ((int, float), "a number", -2, 2),
    "frequency_penalty": ((int, float), "a number", -2, 2),
    "seed": ((int,), "an integer", None, None),
    "top_logprobs": ((int,), "an integer", 0, 20),
}


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            f"aren't using your HTTP library correctly. Parser said: {exc})"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {type(body).__name__}.")
    return body


def _check_type(body: dict[str, Any], key: str, kinds: tuple[type, ...], label: str) -> None:
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise InvalidRequest(f"Invalid type for '{key}': expected {label}, but got "
                             f"{type(value).__name__} instead.", param=key,
                             code="invalid_type")


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
        if role not in ROLES:
            raise InvalidRequest(f"Invalid value for '{where}.role': {role!r}. Supported values "
                                 f"are: {sorted(ROLES)}.", param=f"{where}.role",
                                 code="invalid_value")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(f"Invalid type for '{where}.content': expected a string or "
                                 "an array of content parts.", param=f"{where}.content",
                                 code="invalid_type")
        if role == "tool" and not message.get("tool_call_id"):
            raise InvalidRequest(f"Missing required parameter: '{where}.tool_call_id'.",
                                 param=f"{where}.tool_call_id", code="missing_required_parameter")


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
    _check_type(body, "stream", (bool,), "a boolean")
    _check_type(body, "stream_options", (dict,), "an object")
    _check_type(body, "tools", (list,), "an array")
    _check_type(body, "metadata", (dict,), "an object")
    _check_type(body, "tool_choice", (str, dict), "a string or an object")
    _check_type(body, "response_format", (dict,), "an object")
    for key, (kinds, label, low, high) in _NUMERIC.items():
        _check_type(body, key, kinds, label)
        value = body.get(key)
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise InvalidRequest(f"Invalid value for '{key}': must be {bounds}, got {value}.",
                                 param=key, code="invalid_value")
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise InvalidRequest(f"Invalid value for 'tools[{i}]': expected an object with a "
                                 "'type'.", param=f"tools[{i}]", code="invalid_value")
