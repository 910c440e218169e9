"""Upstreams that frame streams differently, refuse the proxy's key, or push back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from proxy.testing import LiveProxy

USER = [{"role": "user", "content": "hello"}]


def chunk(content: str | None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content},
                                           "finish_reason": None}]
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": choices, "usage": usage}


class OddUpstream:
    """Pretty-printed JSON, CRLF framing and no blank line after [DONE]; or a refusal."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status, self.headers = status, headers or {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if self.status != 200:
            body = {"error": {"message": "Incorrect API key provided: sk-up****wxyz.",
                              "type": "invalid_request_error", "param": None, "code": None}}
            return web.json_response(body, status=self.status, headers=self.headers)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        for item in (chunk("Hel"), chunk("lo"), chunk(None, usage)):
            await resp.write(b"data: " + json.dumps(item, indent=1).replace("\n", " ").encode()
                             + b"\r\n\r\n")
        await resp.write(b"data: [DONE]")
        await resp.write_eof()
        return resp


def test_crlf_framed_pretty_json_stream_is_relayed_and_metered(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, fake=OddUpstream()) as live:  # type: ignore[arg-type]
        chunks = list(live.client().chat.completions.create(model="gpt-4o", messages=USER,
                                                            stream=True))
        rows = live.ledger_rows()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert all(c.choices for c in chunks)  # the usage chunk the client did not ask for is gone
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (5, 2)
    assert rows[0]["error"] is None


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_refusing_the_proxys_key_is_a_502_that_quotes_no_key(tmp_path: Path,
                                                                       status: int) -> None:
    with LiveProxy(tmp_path, fake=OddUpstream(status)) as live:  # type: ignore[arg-type]
        with pytest.raises(openai.APIStatusError) as err:
            live.client().chat.completions.create(model="gpt-4o", messages=USER)
    assert err.value.status_code == 502
    assert err.value.code == "upstream_auth_error"
    assert "sk-up" not in err.value.response.text


def test_upstream_429_keeps_its_retry_after_and_rate_limit_headers(tmp_path: Path) -> None:
    pushback = {"Retry-After": "30", "x-ratelimit-remaining-requests": "0"}
    with LiveProxy(tmp_path, fake=OddUpstream(429, pushback)) as live:  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as err:
            live.client().chat.completions.create(model="gpt-4o", messages=USER)
    assert err.value.response.headers["retry-after"] == "30"
    assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"
