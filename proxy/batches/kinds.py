"""What differs between batches over chat completions and over Responses.

Each endpoint says how a line's body is checked, what the pipeline sees of it (the
internal chat shape; None when the free stages cannot judge it), how a free answer is
written in the endpoint's own shape, and whether the stages' changes to the chat body
(routing, tool stripping) are sent upstream. Responses lines go upstream unchanged: their
chat translation is only what the free stages look at.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.api.validate import validate_chat_request
from proxy.errors import InvalidRequest
from proxy.responses.translate import ResponseShell, echoed_fields, translate_request
from proxy.responses.upstream_state import upstream_need
from proxy.responses.validate import validate_request

CHAT_ENDPOINT = "/v1/chat/completions"
RESPONSES_ENDPOINT = "/v1/responses"


@dataclass(frozen=True, slots=True)
class LineKind:
    """How the proxy treats the lines of batches over one endpoint."""

    endpoint: str
    check: Callable[[dict[str, Any]], None]  # InvalidRequest for a body the endpoint refuses
    to_chat: Callable[[dict[str, Any]], dict[str, Any] | None]  # None: straight upstream
    answer: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]  # (body, chat)
    shaped: bool  # the stages' edits to the chat body are what goes upstream


def _chat_copy(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body)


def _completion(_body: Mapping[str, Any], completion: Mapping[str, Any]) -> dict[str, Any]:
    return dict(completion)


def check_responses_line(body: dict[str, Any]) -> None:
    """A Responses body: validated in full when the proxy translates it, otherwise (hosted
    tools, background, ...) only its model, as the upstream checks the rest."""
    if upstream_need(body) is None:
        validate_request(body)
    elif not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")


def responses_chat(body: dict[str, Any]) -> dict[str, Any] | None:
    """The chat shape of a Responses line; None when it needs the upstream's own state
    (hosted tools, ...) or continues a stored response (its history is not in the line)."""
    if upstream_need(body) is not None or body.get("previous_response_id"):
        return None
    return translate_request(body).chat


def response_answer(body: Mapping[str, Any], completion: Mapping[str, Any]) -> dict[str, Any]:
    """A free chat answer as the Response object the line asked for."""
    shell = ResponseShell(model=str(body.get("model") or ""), echo=echoed_fields(body))
    return shell.from_completion(completion)


CHAT = LineKind(CHAT_ENDPOINT, validate_chat_request, _chat_copy, _completion, shaped=True)
RESPONSES = LineKind(RESPONSES_ENDPOINT, check_responses_line, responses_chat,
                     response_answer, shaped=False)
KINDS = {kind.endpoint: kind for kind in (CHAT, RESPONSES)}
