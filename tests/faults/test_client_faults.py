"""Client faults the disconnect tests (tests/e2e/test_abandoned_streams.py: billing, the slot,
the budget; tests/test_exact_cache_e2e.py and test_semantic_cache.py: nothing stored) do
not cover: a client that leaves before the first byte, and a client that reads slowly."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import openai
import orjson
import pytest

from proxy.testing import LiveProxy
from proxy.upstream.fake import PADDING_BYTES, FakeUpstream

from .support import MODEL, PROMPT, assert_released_and_uncached, assert_settled, guarded


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_gone_before_the_first_byte_is_billed_and_frees_its_slot(
        tmp_path: Path, stream: bool) -> None:
    fake = FakeUpstream(ttft=1.0)
    with guarded(tmp_path, fake=fake, upstream={"first_byte_timeout": 5}) as live:
        with pytest.raises(openai.APITimeoutError):
            live.client(timeout=0.2).chat.completions.create(
                model=MODEL, messages=PROMPT, max_tokens=40, stream=stream)
        [row] = assert_settled(live, 1)  # waits for the row written behind the client
        fake.ttft = 0.0
        # a whole answer is kept for the next asker; a stream the client left is not
        assert_released_and_uncached(live, 1, "upstream" if stream else "exact_cache")
    assert row["cost_usd"] > 0  # the upstream answered, so it billed
    assert row["status"] == (499 if stream else 200)


def send_stream_request(base_url: str, key: str) -> socket.socket:
    """Open a streamed chat request on a raw socket with a tiny receive buffer, unread."""
    url = urlsplit(base_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((url.hostname, url.port))
    body = orjson.dumps({"model": MODEL, "messages": PROMPT, "stream": True})
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
                 b"Authorization: Bearer " + key.encode() + b"\r\n"
                 b"Content-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


def settled_count(read: Callable[[], int], deadline: float = 30.0) -> int:
    """Poll a growing count until it stops growing (unchanged for a second)."""
    end = time.monotonic() + deadline
    last, steady_since = -1, time.monotonic()
    while time.monotonic() < end:
        now = read()
        if now != last:
            last, steady_since = now, time.monotonic()
        elif time.monotonic() - steady_since > 1.0:
            break
        time.sleep(0.05)
    return last


def test_a_slow_reader_holds_the_upstream_back_instead_of_buffering_it(tmp_path: Path) -> None:
    events = 1024  # 64 MiB of padding before the answer
    fake = FakeUpstream(padding_events=events)
    with LiveProxy(tmp_path, fake=fake) as live:
        sock = send_stream_request(live.base_url, live.key())
        try:
            held_at = settled_count(lambda: fake.stream_bytes_sent)
            received = b""
            while b"[DONE]" not in received[-64:]:
                piece = sock.recv(1 << 20)
                assert piece, "the proxy closed the stream early"
                received = received[-64:] + piece
        finally:
            sock.close()
        [row] = live.wait_ledger_rows(1)
    # the upstream waited for the reader: what the proxy and the sockets hold is bounded
    assert held_at < events * PADDING_BYTES // 2
    assert fake.stream_bytes_sent > events * PADDING_BYTES  # then all of it went through
    assert row["status"] == 200 and row["completion_tokens"] > 0
