"""Forwarding to upstreams: one pooled aiohttp session, retries, fallback, SSE pass-through.

Who owns what: `send` returns a Reply; for streams, the Reply's `chunks` iterator
owns the upstream response and releases it when exhausted or closed (the HTTP
handler closes it when the client goes away). aiohttp errors never leave this
module: they become `UpstreamError`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import random
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from proxy.config import Config, UpstreamConfig
from proxy.errors import UpstreamError
from proxy.pipeline.core import Context, Reply, Usage
from proxy.upstream.meter import CompletionMeter
from proxy.upstream.sse import event, event_data, split_events

log = logging.getLogger("proxy.upstream")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 20.0
_PASS_HEADERS = ("openai-processing-ms", "openai-version")
# an upstream refusal also tells the client when to come back
_PASS_ON_ERROR = ("retry-after", "retry-after-ms", "x-should-retry",
                  "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                  "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
                  "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
AUTH_STATUS = frozenset({401, 403})


def retry_delay(attempt: int, base: float, retry_after: str | None) -> float:
    """Seconds to wait before retry `attempt` (1-based): Retry-After, else jittered backoff."""
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
    return base * 2.0 ** (attempt - 1) * (0.5 + random.random())


class _Retry(Exception):
    """An attempt failed in a way worth retrying; carries the failure to report."""

    def __init__(self, reply: Reply | None, error: UpstreamError | None, wait_hint: str | None):
        self.reply, self.error, self.wait_hint = reply, error, wait_hint


class UpstreamClient:
    """Sends chat requests to the upstream that serves the model, with fallback."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self._routes: dict[str, UpstreamConfig] = {}
        self._headers = {u.name: self._auth_headers(u) for u in config.upstreams}
        self._timeouts = {(u.name, stream): self._timeout(u, stream)
                          for u in config.upstreams for stream in (False, True)}

    @staticmethod
    def _timeout(upstream: UpstreamConfig, stream: bool) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None if stream else upstream.total_timeout,
            connect=upstream.connect_timeout,
            sock_read=upstream.first_byte_timeout,
        )

    @staticmethod
    def _auth_headers(upstream: UpstreamConfig) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = upstream.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def authorization(self, upstream: UpstreamConfig) -> dict[str, str]:
        """The header that carries `upstream`'s key (empty without a key); never log it."""
        value = self._headers[upstream.name].get("Authorization")
        return {"Authorization": value} if value else {}

    def stream_timeout(self, upstream: UpstreamConfig) -> aiohttp.ClientTimeout:
        """Timeouts for an answer of any length: connect, and the gap between chunks."""
        return self._timeouts[(upstream.name, True)]

    def upstream_for(self, model: str) -> UpstreamConfig:
        """The first upstream whose `models` patterns match `model`."""
        found = self._routes.get(model)
        if found is None:
            found = next(
                (u for u in self.config.upstreams
                 if any(fnmatch.fnmatchcase(model, p) for p in u.models)),
                self.config.upstreams[0],
            )
            self._routes[model] = found
        return found

    def attempts(self, model: str) -> list[tuple[UpstreamConfig, str]]:
        """The upstream/model pairs to try in order: the routed one, then the fallbacks."""
        chain = [(self.upstream_for(model), model)]
        for name, target in self.config.fallbacks.get(model, ()):
            chain.append((self.config.upstream(name), target))
        return chain

    async def send(self, ctx: Context) -> Reply:
        """Forward the request; on failure walk the fallback chain."""
        failure: Reply | UpstreamError | None = None
        for i, (upstream, model) in enumerate(self.attempts(ctx.model)):
            if i:
                ctx.decide("upstream", "fallback", f"{ctx.model} failed; trying "
                           f"{upstream.name}:{model}", upstream=upstream.name, model=model)
            body = ctx.encoded_body() if i == 0 else orjson.dumps({**ctx.body, "model": model})
            try:
                reply = await self._with_retries(upstream, body, ctx, model)
            except UpstreamError as exc:
                failure = exc
                continue
            reply.model = model
            if reply.status in AUTH_STATUS:
                raise credentials_refused(upstream, reply.status)
            if reply.ok or reply.status not in RETRYABLE_STATUS:
                return reply
            failure = reply
        if isinstance(failure, Reply):
            return failure
        assert failure is not None
        raise failure

    async def _with_retries(self, upstream: UpstreamConfig, body: bytes, ctx: Context,
                            model: str) -> Reply:
        attempt = 0
        while True:
            try:
                return await self._attempt(upstream, body, ctx, model)
            except _Retry as retry:
                attempt += 1
                delay = retry_delay(attempt, upstream.backoff_seconds, retry.wait_hint)
                if attempt > upstream.max_retries or delay > MAX_RETRY_AFTER:
                    if retry.reply is not None:
                        return retry.reply
                    assert retry.error is not None
                    raise retry.error from None
                log.info("upstream %s retry %d in %.2fs", upstream.name, attempt, delay)
                await asyncio.sleep(delay)

    async def _attempt(self, upstream: UpstreamConfig, body: bytes, ctx: Context,
                       model: str) -> Reply:
        url = upstream.base_url + "/chat/completions"
        try:
            resp = await self.session.post(url, data=body, headers=self._headers[upstream.name],
                                           timeout=self._timeouts[(upstream.name, ctx.stream)])
        except asyncio.TimeoutError:
            raise _Retry(None, UpstreamError(
                f"upstream {upstream.name!r} did not answer within "
                f"{upstream.first_byte_timeout}s", status=504, code="upstream_timeout"),
                None) from None
        except aiohttp.ClientError as exc:
            raise _Retry(None, UpstreamError(
                f"upstream {upstream.name!r} unreachable: {type(exc).__name__}"), None) from None
        headers = {h: resp.headers[h] for h in _PASS_HEADERS if h in resp.headers}
        is_sse = resp.headers.get("Content-Type", "").startswith("text/event-stream")
        if resp.status == 200 and is_sse:
            reply = Reply(status=200, headers=headers)
            reply.chunks = self._relay(resp, reply, ctx, model)
            return reply
        try:
            data = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            resp.close()
            raise _Retry(None, UpstreamError(
                f"upstream {upstream.name!r} broke off its answer"), None) from None
        headers["Content-Type"] = resp.headers.get("Content-Type", "application/json")
        if resp.status >= 400:
            headers.update((h, resp.headers[h]) for h in _PASS_ON_ERROR if h in resp.headers)
        reply = Reply(status=resp.status, body=data, headers=headers)
        if resp.status >= 400:  # the ledger row says why (never the body: it may quote a key)
            reply.error = f"upstream {upstream.name!r} answered {resp.status}"
        if resp.status in RETRYABLE_STATUS:
            raise _Retry(reply, None, resp.headers.get("Retry-After"))
        if reply.ok:
            reply.usage = Usage.from_openai(_usage_of(reply, upstream))
        return reply

    async def _relay(
        self, resp: aiohttp.ClientResponse, reply: Reply, ctx: Context, model: str
    ) -> AsyncIterator[bytes]:
        """Yield the upstream's SSE bytes as they arrive, reading usage on the way.

        A stream that ends without a usage chunk (cut, closed early, or from an upstream
        that ignores include_usage) gets the usage counted from what it carried: the
        upstream bills those tokens all the same.
        """
        buffer = b""
        keep_usage = ctx.client_wants_usage
        meter = CompletionMeter(model)
        try:
            async for data in resp.content.iter_any():
                buffer += data
                if b"\r" in buffer:  # CRLF framing; a lone trailing CR waits for its LF
                    buffer = buffer.replace(b"\r\n", b"\n")
                cut = buffer.rfind(b"\n\n")
                if cut < 0:
                    continue
                ready, buffer = buffer[:cut + 2], buffer[cut + 2:]
                if _USAGE.search(ready) or b"[DONE]" in ready:
                    ready = self._inspect(ready, reply, keep_usage)
                if ready:
                    meter.feed(ready)
                    yield ready
                if reply.error:  # a malformed event: nothing after it is passed on
                    break
            if buffer.strip() and not reply.error:  # a last event without its blank line
                ready = self._inspect(buffer + b"\n\n", reply, keep_usage)
                if ready:
                    meter.feed(ready)
                    yield ready
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            reply.error = f"upstream stream broke off: {type(exc).__name__}"
        finally:
            resp.close()
            if reply.usage is None:
                reply.usage = meter.usage(ctx.body)
                ctx.decide("upstream", "usage_counted",
                           "the stream ended without usage; billed as counted",
                           prompt_tokens=reply.usage.prompt_tokens,
                           completion_tokens=reply.usage.completion_tokens)
        if not reply.completed:
            reply.error = reply.error or "upstream stream ended before [DONE]"
            log.warning("%s", reply.error)
            yield event(UpstreamError(reply.error).to_dict())

    @staticmethod
    def _inspect(ready: bytes, reply: Reply, keep_usage: bool) -> bytes:
        """The events of `ready` to pass on, noting [DONE] and usage on the way; a usage
        event that is not a JSON object sets `reply.error`, and it and the rest are dropped."""
        events, _ = split_events(ready + b"\n\n")
        kept = []
        for raw in events:
            data = event_data(raw) or b""
            if data.strip() == b"[DONE]":
                reply.completed = True
            elif _USAGE.search(data):
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    chunk = None
                if not isinstance(chunk, dict):
                    reply.error = "upstream sent a malformed stream event"
                    break
                reply.usage = Usage.from_openai(chunk.get("usage"))
                if not keep_usage and not chunk.get("choices"):
                    continue
            kept.append(raw)
        return b"".join(kept)

    async def complete(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A plain non-streamed completion for the proxy's own use (summaries, checks)."""
        ctx = Context(request_id="internal", tenant=None, body=dict(body))  # type: ignore[arg-type]
        ctx.body["stream"] = False
        ctx.changed()
        reply = await self.send(ctx)
        if not reply.ok:
            raise UpstreamError(f"upstream answered {reply.status}", status=reply.status)
        result = reply.json()
        assert isinstance(result, dict)
        return result


def credentials_refused(upstream: UpstreamConfig, status: int) -> UpstreamError:
    """The error for an upstream that refused the proxy's own key (401/403): the operator is
    told in the log; the client never gets upstream's message, which may quote that key."""
    log.error("upstream %s refused the configured key (%d); check %s",
              upstream.name, status, upstream.key_env or "its key_env")
    return UpstreamError(f"upstream {upstream.name!r} refused the proxy's credentials; "
                         "the proxy operator has been told", code="upstream_auth_error")


def _usage_of(reply: Reply, upstream: UpstreamConfig) -> Mapping[str, Any] | None:
    """The usage of a successful non-streamed answer; an answer that is not a JSON object
    is an upstream failure (502), never passed on as a success."""
    try:
        parsed = reply.json()
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        log.warning("upstream %s answered %d with a body that is not a JSON object",
                    upstream.name, reply.status)
        raise UpstreamError(f"upstream {upstream.name!r} answered with malformed JSON",
                            code="upstream_bad_response")
    return parsed.get("usage") if isinstance(parsed.get("usage"), dict) else None


async def fetch_models(client: UpstreamClient) -> list[dict[str, Any]]:
    """The model objects every upstream lists (first one wins on duplicates)."""
    found: dict[str, dict[str, Any]] = {}
    for upstream in client.config.upstreams:
        try:
            async with client.session.get(
                upstream.base_url + "/models", headers=client._headers[upstream.name],
                timeout=aiohttp.ClientTimeout(total=upstream.first_byte_timeout),
            ) as resp:
                if resp.status != 200:
                    continue
                data = orjson.loads(await resp.read()).get("data") or []
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError):
            log.warning("upstream %s: could not list models", upstream.name)
            continue
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                found.setdefault(item["id"], item)
    return list(found.values())
