"""The pipeline's types: Context, Decision, Reply, the Stage protocol and Pipeline.

A stage is any object with a `name` and `async __call__(ctx, call_next) -> Reply`.
It answers by itself (short-circuit, never calling `call_next`), changes
`ctx.body` and calls `call_next`, or wraps the rest (post-processing the Reply).
Every stage records what it did with `ctx.decide(...)`; that one trace feeds the
response headers, the explain endpoint, the ledger and the metrics.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from proxy.auth import Tenant
    from proxy.pipeline.analysis import LastMessage
    from proxy.store.bodies import BodyRecord


@dataclass(slots=True)
class Decision:
    """One stage's verdict on one request: what it did and why."""

    stage: str
    action: str
    why: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for explain and logs."""
        return {"stage": self.stage, "action": self.action, "why": self.why, **self.data}


@dataclass(slots=True)
class Usage:
    """Token counts of one completion; `cached_tokens` are the prompt tokens the upstream
    read from its prompt cache (part of `prompt_tokens`, billed at the cached rate)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage | None:
        """Read OpenAI's `usage` object (None stays None)."""
        if not usage:
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
        return cls(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                   int(cached or 0))

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's `usage` object for these counts."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Bill:
    """What one pass-through answer is billed: its tokens priced at its model (a batch at
    the batch price; its tokens do not count towards tokens per minute)."""

    model: str
    usage: Usage
    cost_usd: float
    batch: bool = False


class AnswerKeeper(Protocol):
    """Keeps a request's answer for its ledger row and body log (observe/capture.py)."""

    def answer(self) -> dict[str, Any] | None:
        """The complete chat.completion, or None."""
        ...

    def body_record(self, ctx: Context, ts: float) -> BodyRecord | None:
        """The body-log row, when bodies are logged and there is an answer."""
        ...


@dataclass(slots=True)
class Context:
    """Everything known about one request while it travels through the pipeline.

    `raw` holds the client's bytes for as long as nothing changed the body, so an
    unchanged request is forwarded byte for byte; call `changed()` after editing
    `body` (or use `set_model`). `client_body` keeps the body's fields as the client
    sent them (a shallow copy: stages replace fields such as `messages` or `tools`,
    they never edit them in place), for what must be judged on the original request
    (its conversation, its baseline cost). Stages and handlers hand each other facts
    through the typed fields after `client_body`, each written by the party its
    comment names.
    """

    request_id: str
    tenant: Tenant
    body: dict[str, Any]
    raw: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    trace: list[Decision] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    requested_model: str = ""
    stream: bool = False
    client_wants_usage: bool = False
    baseline_prompt_tokens: int | None = None
    baseline_model: str | None = None
    dry_run: bool = False
    source: str = "chat"
    analyzed: bool = False
    last_message: LastMessage | None = None
    client_body: dict[str, Any] = field(init=False)
    # the thread and run a threads turn belongs to (threads executor)
    thread: dict[str, Any] | None = None
    # {"key", "text"} summary of older turns kept with the thread or response chain
    # (threads executor, responses handler); trim reuses it when its key still matches
    prior_summary: dict[str, str] | None = None
    # {"key", "text"} summary trim made or reused this turn, to keep for the next one
    new_summary: dict[str, str] | None = None
    # milliseconds spent waiting on the upstream (upstream terminal, pass-through)
    upstream_ms: float | None = None
    # the request's token in the limit store (admission; budget reuses it)
    limit_token: str | None = None
    # x-ratelimit-* headers collected by the limit stages (admission sends them)
    ratelimit_headers: dict[str, str] = field(default_factory=dict)
    # what the answer is captured into for the ledger and body log (dispatch)
    answer_capture: AnswerKeeper | None = None
    # a pass-through answer read whole, and what it is billed (pass-through usage tap)
    passthrough_answer: dict[str, Any] | None = None
    passthrough_bill: Bill | None = None

    def __post_init__(self) -> None:
        self.client_body = dict(self.body)
        if not self.requested_model:
            self.requested_model = str(self.body.get("model", ""))
        self.stream = bool(self.body.get("stream"))
        opts = self.body.get("stream_options")
        self.client_wants_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))

    @property
    def model(self) -> str:
        """The model the request will be sent with (after routing)."""
        return str(self.body.get("model", ""))

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The request's chat messages."""
        msgs = self.body.get("messages")
        return msgs if isinstance(msgs, list) else []

    def set_model(self, model: str) -> None:
        """Rewrite the model the request is sent with."""
        if model != self.body.get("model"):
            self.body["model"] = model
            self.changed()

    def add_field(self, key: str, value: Any) -> None:
        """Set a top-level body field the body does not have yet.

        While the client's bytes are still forwarded as they came, the field is
        appended to them instead of re-encoding the whole body (a long history costs
        a copy, not a serialization); otherwise it is like editing `body` + `changed()`.
        """
        had_key = key in self.body
        self.body[key] = value
        raw = self.raw
        end = len(raw.rstrip(b" \t\r\n")) if raw is not None else 0
        if had_key or raw is None or raw[end - 1:end] != b"}":
            self.changed()
            return
        head = raw[:end - 1].rstrip(b" \t\r\n")
        member = orjson.dumps(key) + b":" + orjson.dumps(value)
        self.raw = head + (b"" if head.endswith(b"{") else b",") + member + b"}"

    def changed(self) -> None:
        """Mark the body as edited: it is re-serialized before forwarding."""
        self.raw = None

    def encoded_body(self) -> bytes:
        """The bytes to forward: the client's own when unchanged."""
        if self.raw is None:
            self.raw = orjson.dumps(self.body)
        return self.raw

    def decide(self, stage: str, action: str, why: str, **data: Any) -> Decision:
        """Append a decision to the trace and return it."""
        decision = Decision(stage, action, why, data)
        self.trace.append(decision)
        return decision


Chunks = AsyncIterator[bytes]


@dataclass(slots=True)
class Reply:
    """The answer to one request: a complete body or a stream of SSE events.

    `stage` names who produced it (`upstream`, `pattern`, `exact_cache`, ...);
    `usage` is what was billed upstream (None for free answers) and `saved_usage`
    what a free answer saved. For streams, `usage` and `completed` are filled in
    by the time the last chunk has been yielded (or the stream was closed);
    `client_left` is set when the client hung up before the end (the stream is then
    read on for billing, and nothing from it may be kept). `answer_hooks` are what
    stages asked to be given the assembled answer of a stream (`replies.when_answered`:
    one assembly for all of them).
    """

    status: int = 200
    body: bytes | None = None
    chunks: Chunks | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stage: str = "upstream"
    model: str = ""
    usage: Usage | None = None
    saved_usage: Usage | None = None
    completed: bool = False
    client_left: bool = False
    error: str | None = None
    answer_hooks: list[Callable[[dict[str, Any]], Awaitable[None]]] | None = None
    _parsed: Any = None

    @property
    def is_stream(self) -> bool:
        """True when the reply is a stream of SSE events."""
        return self.chunks is not None

    @property
    def ok(self) -> bool:
        """True for a 2xx reply."""
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body parsed (cached); only for complete replies."""
        if self._parsed is None and self.body is not None:
            self._parsed = orjson.loads(self.body)
        return self._parsed


Next = Callable[[Context], Awaitable[Reply]]


class Stage(Protocol):
    """A pipeline stage: answers, edits the request, or wraps the rest."""

    name: str

    async def __call__(self, ctx: Context, call_next: Next) -> Reply: ...


def _bind(stage: Stage, call_next: Next) -> Next:
    async def call(ctx: Context) -> Reply:
        return await stage(ctx, call_next)

    return call


class Pipeline:
    """An ordered chain of stages ending in a terminal (the upstream call)."""

    def __init__(self, stages: Sequence[Stage], terminal: Next) -> None:
        self.stages = tuple(stages)
        handler = terminal
        for stage in reversed(self.stages):
            handler = _bind(stage, handler)
        self._handler = handler

    @property
    def names(self) -> list[str]:
        """Stage names in order."""
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Stage | None:
        """The stage called `name`, if it is in the chain."""
        return next((s for s in self.stages if s.name == name), None)

    async def __call__(self, ctx: Context) -> Reply:
        return await self._handler(ctx)
