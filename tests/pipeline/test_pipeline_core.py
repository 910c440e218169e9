"""Pipeline order, short-circuits, and rule reloads that keep the last good pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.auth import Tenant
from proxy.config import ConfigError
from proxy.pipeline.core import Context, Next, Pipeline, Reply
from proxy.pipeline.registry import PipelineHolder

TENANT = Tenant("t", "h", "t")


class Recorder:
    """A stage that notes its passage and optionally answers."""

    def __init__(self, name: str, answer: bool = False) -> None:
        self.name, self.answer = name, answer

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        ctx.decide(self.name, "seen", "test")
        if self.answer:
            return Reply(body=b"{}", stage=self.name)
        return await call_next(ctx)


async def terminal(ctx: Context) -> Reply:
    ctx.decide("upstream", "forwarded", "test")
    return Reply(body=b"{}")


def ctx(**body: Any) -> Context:
    return Context("r", TENANT, {"model": "m", "messages": [], **body}, raw=b"raw")


async def test_stages_run_in_order_then_terminal() -> None:
    c = ctx()
    reply = await Pipeline([Recorder("a"), Recorder("b")], terminal)(c)
    assert [d.stage for d in c.trace] == ["a", "b", "upstream"] and reply.stage == "upstream"


async def test_a_stage_that_answers_stops_the_chain() -> None:
    c = ctx()
    reply = await Pipeline([Recorder("a", answer=True), Recorder("b")], terminal)(c)
    assert [d.stage for d in c.trace] == ["a"] and reply.stage == "a"


def test_body_is_forwarded_raw_until_changed() -> None:
    c = ctx(stream=True, stream_options={"include_usage": True})
    assert c.stream and c.client_wants_usage and c.encoded_body() == b"raw"
    c.set_model("other")
    assert c.encoded_body() != b"raw" and b'"other"' in c.encoded_body()


def test_reload_keeps_last_good_pipeline(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("pipeline = []\n")
    holder = PipelineHolder(str(rules), resources=None, terminal=terminal)  # type: ignore[arg-type]
    good = holder.current
    rules.write_text('pipeline = ["no_such_stage"]\n')
    assert holder.reload_if_changed() is False
    assert holder.current is good
    assert "no_such_stage" in (holder.last_error or "")
    rules.write_text("pipeline = [\n")
    assert holder.reload_if_changed() is False and "invalid TOML" in (holder.last_error or "")


def test_missing_rule_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        PipelineHolder(str(tmp_path / "none.toml"), None, terminal)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [
    b'{"model":"m","messages":[]}',
    b'{"model": "m", "messages": []}\n',
    b'{\n  "model": "m",\n  "messages": []\n}\r\n ',
    b'{"model":"m","messages":[{"role":"user","content":"a } b"}]}',
])
def test_added_field_is_appended_to_the_client_bytes(raw: bytes) -> None:
    body = orjson.loads(raw)
    c = Context("r", TENANT, body, raw=raw)
    c.add_field("stream_options", {"include_usage": True})
    sent = c.encoded_body()
    assert sent.startswith(raw.rstrip()[:-1].rstrip())  # the client's bytes, not re-encoded
    assert orjson.loads(sent) == {**orjson.loads(raw), "stream_options": {"include_usage": True}}
    assert c.body["stream_options"] == {"include_usage": True}


def test_added_field_goes_into_an_empty_object() -> None:
    c = Context("r", TENANT, {}, raw=b"{ }")
    c.add_field("k", [1, "x"])
    assert c.encoded_body() == b'{"k":[1,"x"]}'


@pytest.mark.parametrize(("body", "raw"), [
    ({"model": "m", "stream_options": None}, b'{"model":"m","stream_options":null}'),
    ({"model": "m"}, None),
])
def test_added_field_re_encodes_when_the_bytes_cannot_be_kept(body: dict[str, Any],
                                                               raw: bytes | None) -> None:
    c = Context("r", TENANT, body, raw=raw)
    c.add_field("stream_options", {"include_usage": True})
    assert c.encoded_body() == orjson.dumps({**body, "stream_options": {"include_usage": True}})
