"""Every /v1 path the proxy does not serve itself, through the official openai SDK to the fake."""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from proxy.pipeline.stages.exact_cache import exact_entries
from proxy.pricing import PriceTable
from proxy.testing import LiveProxy
from proxy.upstream.fake_api import speech_pieces, unit_vector

RULES = 'pipeline = ["admission", "exact_cache", "budget"]\n[exact_cache]\n'
SMALL = "text-embedding-3-small"
PRICES = PriceTable()
BATCH_LINE = {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": "Name a fruit."}]}}


def proxy(tmp_path: Path, config: dict[str, Any] | None = None, rules: str = RULES) -> LiveProxy:
    """A live proxy with admission, the exact cache and budgets, alice and bob as keys."""
    return LiveProxy(tmp_path, rules=rules, config=config)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    with proxy(tmp_path) as running:
        yield running


def embed(live: LiveProxy, text: str = "the quick brown fox", key: str = "alice",
          **params: Any) -> Any:
    """One embeddings call; the raw response (headers + parsed body)."""
    return live.client(key).embeddings.with_raw_response.create(
        model=params.pop("model", SMALL), input=text, **params)


def rows(live: LiveProxy, count: int | None = None) -> list[dict[str, Any]]:
    """The pass-through ledger rows; with `count`, once there are that many (a row is
    written when the answer's last byte has gone, so it can trail the client's read)."""
    deadline = time.monotonic() + 10
    while True:
        found = [r for r in live.ledger_rows() if r["source"] == "passthrough"]
        if count is None or len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def raw_call(live: LiveProxy, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request to the proxy with alice's key, headers exactly as given:
    (status, headers, body)."""
    url = urllib.parse.urlsplit(live.base_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        connection.request(method, path, body=body,
                           headers={"Authorization": f"Bearer {live.key()}", **(headers or {})})
        resp = connection.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        connection.close()


def settle(live: LiveProxy) -> None:
    """Let the cache's write-behind queue finish."""
    live.run(exact_entries(live.resources).drain())


def test_second_identical_embeddings_call_is_free(live: LiveProxy) -> None:
    first = embed(live)
    settle(live)
    second = embed(live)
    assert first.headers["x-proxy-cache"] == "miss"
    assert second.headers["x-proxy-cache"] == "hit-exact"
    assert second.headers["x-proxy-stage"] == "exact_cache"
    assert live.fake.calls("POST", "/v1/embeddings") == 1
    vector = second.parse().data[0].embedding
    assert vector == pytest.approx(unit_vector(SMALL, "the quick brown fox", 1536), abs=1e-6)
    assert vector == first.parse().data[0].embedding
    used = first.parse().usage.prompt_tokens
    assert second.parse().usage.prompt_tokens == used > 0
    paid, free = rows(live, 2)
    cost = PRICES.cost(SMALL, used, 0)
    assert (paid["stage"], paid["model"], paid["prompt_tokens"]) == ("upstream", SMALL, used)
    assert paid["cost_usd"] == pytest.approx(cost) and cost > 0
    assert (free["stage"], free["cost_usd"]) == ("exact_cache", 0.0)
    assert free["baseline_usd"] == pytest.approx(cost)  # what the cache saved
    assert '"path":"/v1/embeddings"' in paid["trace"]


def test_embeddings_options_and_directives_are_part_of_the_cache_key(live: LiveProxy) -> None:
    embed(live)
    settle(live)
    shorter = embed(live, dimensions=256)
    as_floats = embed(live, encoding_format="float")
    settle(live)
    refreshed = embed(live, extra_headers={"x-proxy-cache": "no-cache"})
    assert len(shorter.parse().data[0].embedding) == 256
    assert as_floats.headers["x-proxy-cache"] == "miss"
    assert refreshed.headers["x-proxy-cache"] == "bypass"
    assert embed(live, dimensions=256).headers["x-proxy-cache"] == "hit-exact"
    assert live.fake.calls("POST", "/v1/embeddings") == 4


def test_embeddings_cache_is_isolated_between_key_namespaces(tmp_path: Path) -> None:
    with proxy(tmp_path / "own") as live:
        embed(live, key="alice")
        settle(live)
        bob = embed(live, key="bob")
        assert bob.headers["x-proxy-cache"] == "miss"
        assert live.fake.calls("POST", "/v1/embeddings") == 2
    with proxy(tmp_path / "one-namespace", {"keys": {"bob": {"namespace": "alice"}}}) as live:
        embed(live, key="alice")
        settle(live)
        assert embed(live, key="bob").headers["x-proxy-cache"] == "hit-exact"
        assert live.fake.calls("POST", "/v1/embeddings") == 1


def test_embeddings_cache_and_batch_billing_on_redis(tmp_path: Path,
                                                     redis_storage: dict[str, Any]) -> None:
    with proxy(tmp_path, redis_storage) as live:
        embed(live)
        settle(live)
        assert embed(live).headers["x-proxy-cache"] == "hit-exact"
        client = live.client()
        upload = client.files.create(file=("in.jsonl", orjson.dumps(BATCH_LINE)), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        client.batches.retrieve(batch.id), client.batches.retrieve(batch.id)
        billed = [r for r in rows(live, 6)
                  if r["model"] == "gpt-4o-mini" and r["cost_usd"] > 0]
    assert len(billed) == 1


def test_moderations_pass_through(live: LiveProxy) -> None:
    result = live.client().moderations.create(input=["I will kill it", "have a nice day"])
    assert [r.flagged for r in result.results] == [True, False]
    assert result.results[0].categories.violence
    (row,) = rows(live, 1)
    assert (row["status"], row["cost_usd"], row["model"]) == (200, 0.0, "omni-moderation-latest")


def test_file_upload_streams_past_the_body_limit_and_downloads(tmp_path: Path) -> None:
    # the JSON body limit is 1 MiB; a 3 MiB upload is streamed up, never read whole
    content = bytes(range(256)) * (3 * 4096)
    with proxy(tmp_path, {"server": {"max_body_bytes": 1024 * 1024}}) as live:
        client = live.client()
        uploaded = client.files.create(file=("data.bin", content), purpose="assistants")
        assert uploaded.bytes == len(content) and uploaded.filename == "data.bin"
        assert client.files.content(uploaded.id).read() == content
        assert client.files.retrieve(uploaded.id).purpose == "assistants"
        assert [f.id for f in client.files.list()] == [uploaded.id]
        assert client.files.delete(uploaded.id).deleted
        sent = next(r for r in live.fake.seen if r.method == "POST" and r.path == "/v1/files")
        with pytest.raises(openai.APIStatusError) as too_big:
            client.embeddings.create(model=SMALL, input="x" * (2 * 1024 * 1024))
        assert [r["status"] for r in rows(live, 5)] == [200] * 5
    assert sent.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert too_big.value.status_code == 413  # JSON bodies are read, within the limit


def test_batch_runs_over_an_uploaded_file_and_is_billed_once_at_the_batch_price(
        live: LiveProxy) -> None:
    client = live.client()
    lines = [BATCH_LINE, {**BATCH_LINE, "custom_id": "q2"}]
    upload = client.files.create(file=("in.jsonl", b"\n".join(map(orjson.dumps, lines))),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    assert batch.status == "validating"
    done = client.batches.retrieve(batch.id)
    again = client.batches.retrieve(batch.id)
    assert done.status == again.status == "completed"
    assert done.request_counts and done.request_counts.completed == 2
    output = client.files.content(done.output_file_id).text.splitlines()
    answers = [orjson.loads(line) for line in output]
    assert [a["custom_id"] for a in answers] == ["q1", "q2"]
    assert all(a["response"]["body"]["object"] == "chat.completion" for a in answers)
    assert done.usage is not None
    expected = PRICES.cost("gpt-4o-mini", done.usage.input_tokens, done.usage.output_tokens) / 2
    billed = [r for r in rows(live, 5) if r["cost_usd"] > 0]
    assert len(billed) == 1  # polled twice, billed once
    assert billed[0]["cost_usd"] == pytest.approx(expected) and expected > 0
    assert billed[0]["model"] == "gpt-4o-mini"
    assert billed[0]["prompt_tokens"] == done.usage.input_tokens


def test_audio_speech_is_streamed_piece_by_piece(live: LiveProxy) -> None:
    # the fake holds its answer after the first piece: that piece must reach the client
    live.fake.speech_paused = True
    client = live.client(timeout=20)
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="hello there") as resp:
        pieces = resp.iter_bytes()
        received = next(pieces)
        live.fake.speech_paused = False
        received += b"".join(pieces)
        assert resp.headers["content-type"] == "audio/mpeg"
    assert received == b"".join(speech_pieces("hello there"))
    transcript = client.audio.transcriptions.create(model="whisper-1",
                                                    file=("a.mp3", b"\x00" * 48_000))
    assert transcript.text == "fake transcript of 48000 bytes"


def test_concurrency_slot_is_held_until_a_streamed_answer_ends(tmp_path: Path) -> None:
    with proxy(tmp_path, {"keys": {"alice": {"max_concurrent": 1}}}) as live:
        live.fake.speech_paused = True
        client = live.client(timeout=20)
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input="hi") as resp:
            pieces = resp.iter_bytes()
            next(pieces)
            with pytest.raises(openai.RateLimitError) as refused:
                embed(live)
            live.fake.speech_paused = False
            b"".join(pieces)
        assert embed(live).parse().data
    assert refused.value.code == "rate_limit_exceeded"


def test_a_cut_upstream_stream_is_not_passed_off_as_complete(live: LiveProxy) -> None:
    live.fake.fail("cut", model="tts-1")
    with pytest.raises(Exception) as err:
        with live.client().audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input="hi") as resp:
            resp.read()
    assert "incomplete" in str(err.value) or "closed" in str(err.value)
    (row,) = rows(live, 1)
    assert "broke off" in (row["error"] or "")


def test_unknown_paths_get_the_upstreams_answer(live: LiveProxy) -> None:
    status, _, body = raw_call(live, "GET", "/v1/fine_tuning/jobs?limit=2")
    assert status == 404
    assert orjson.loads(body)["error"]["message"] == (
        "Invalid URL (GET /v1/fine_tuning/jobs) (fake upstream)")
    status, _, _ = raw_call(live, "GET", "/v1/chat/completions")  # upstream's stored completions
    assert status == 404 and live.fake.calls("GET", "/v1/chat/completions") == 1
    # the proxy's own paths stay its own
    assert raw_call(live, "GET", "/v1/models")[0] == 200
    for path in ("/v1/proxy/nothing", "/v1/threads/thread_x/nothing", "/v1/assistants/a/b"):
        status, _, body = raw_call(live, "GET", path)
        assert status == 404 and b"Unknown request URL" in body
    status, _, body = raw_call(live, "GET", "/v1/proxy/explain")  # served for POST only
    assert orjson.loads(body)["error"]["code"] == "method_not_allowed"
    assert [(r.path, r.query) for r in live.fake.seen] == [
        ("/v1/fine_tuning/jobs", "limit=2"), ("/v1/chat/completions", ""), ("/v1/models", "")]


def test_allowed_models_are_enforced_on_json_bodies(tmp_path: Path) -> None:
    with proxy(tmp_path, {"keys": {"alice": {"allowed_models": [SMALL]}}}) as live:
        with pytest.raises(openai.PermissionDeniedError) as err:
            embed(live, model="text-embedding-3-large")
        assert live.fake.calls("POST", "/v1/embeddings") == 0
        assert embed(live).parse().model == SMALL
        assert [r["status"] for r in rows(live, 2)] == [403, 200]
    assert err.value.code == "model_not_allowed"


def test_rpm_is_enforced(tmp_path: Path) -> None:
    with proxy(tmp_path, {"keys": {"alice": {"rpm": 2}}}) as live:
        embed(live, "one"), embed(live, "two")
        with pytest.raises(openai.RateLimitError) as err:
            embed(live, "three")
        with pytest.raises(openai.RateLimitError):
            live.client().files.create(file=("a.txt", b"abc"), purpose="assistants")
        assert embed(live, "bob's", key="bob").parse().data
        assert len(live.fake.seen) == 3
        assert [r["status"] for r in rows(live, 5)] == [200, 200, 429, 429, 200]
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_key_over_budget_gets_429(tmp_path: Path) -> None:
    one_call = PRICES.cost(SMALL, 4, 0)  # "the quick brown fox": 4 tokens
    with proxy(tmp_path, {"keys": {"alice": {"budget_usd": one_call}}}) as live:
        assert embed(live).parse().usage.prompt_tokens == 4
        with pytest.raises(openai.RateLimitError) as err:
            embed(live, "another text")
        with pytest.raises(openai.RateLimitError):
            live.client().files.list()
        settle(live)
        assert embed(live).headers["x-proxy-cache"] == "hit-exact"  # free answers still come
        assert len(live.fake.seen) == 1
    assert err.value.code == "insufficient_quota"
    assert err.value.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]",
                                  b'{"model": "m", "input": "x", "dimensions": 1.5}'])
def test_a_body_upstream_cannot_read_gets_its_400_not_a_500(live: LiveProxy, body: bytes) -> None:
    status, _, answer = raw_call(live, "POST", "/v1/embeddings", body=body,
                                 headers={"Content-Type": "application/json"})
    assert status == 400
    assert orjson.loads(answer)["error"]["type"] == "invalid_request_error"


def test_upstream_errors_keep_their_status_and_body(live: LiveProxy) -> None:
    client = live.client()
    live.fake.fail("429", model=SMALL, retry_after=7)
    with pytest.raises(openai.RateLimitError) as limited:
        embed(live)
    live.fake.fail("500", model=SMALL)
    with pytest.raises(openai.InternalServerError) as failed:
        embed(live)
    with pytest.raises(openai.NotFoundError) as missing:
        client.files.retrieve("file-nope")
    live.fake.fail("401", model=SMALL)  # upstream refuses the proxy's own key
    with pytest.raises(openai.APIStatusError) as refused:
        embed(live)
    assert limited.value.message.endswith("Rate limit reached (fake)")
    assert limited.value.response.headers["retry-after"] == "7"
    assert failed.value.message.endswith("The server had an error (fake)")
    assert missing.value.message.endswith("No such File object: file-nope")
    assert (refused.value.status_code, refused.value.code) == (502, "upstream_auth_error")
    assert "Incorrect API key" not in refused.value.message
    assert live.fake.calls("POST", "/v1/embeddings") == 3  # the proxy does not retry them
    assert [r["status"] for r in rows(live, 4)] == [429, 500, 404, 502]


def test_upstream_key_is_injected_and_hop_by_hop_headers_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-upstream-secret")
    with proxy(tmp_path, {"upstream": {"key_env": "FAKE_UPSTREAM_KEY"}}) as live:
        status, headers, body = raw_call(
            live, "POST", "/v1/moderations", body=b'{"input": "hello"}',
            headers={"Content-Type": "application/json", "Connection": "X-Hop",
                     "X-Hop": "1", "OpenAI-Beta": "assistants=v2", "api-key": live.key(),
                     "x-proxy-cache": "no-store", "OpenAI-Organization": "org-client"})
        (sent,) = live.fake.seen
    forwarded = {name.lower(): value for name, value in sent.headers.items()}
    assert status == 200 and orjson.loads(body)["results"]
    assert forwarded["authorization"] == "Bearer sk-upstream-secret"
    assert forwarded["openai-beta"] == "assistants=v2"
    assert not forwarded.keys() & {"x-hop", "api-key", "x-proxy-cache", "openai-organization"}
    assert "sk-upstream-secret" not in str(headers) + body.decode()
    assert live.key() not in str(sent.headers)
