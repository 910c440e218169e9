"""`python -m proxy serve` as a process: SIGTERM stops accepting, lets the streams in
flight finish and flushes their ledger rows; SIGHUP reloads the rules at once."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from limits_support import FakeServer, ProxyProcess, write_config

from proxy.upstream.fake import FakeUpstream

USER = [{"role": "user", "content": "Tell me about graceful shutdowns"}]
KEY = "sk-faults-alice"
STREAMS = 5


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A slow fake upstream (about two seconds a stream) served from a thread."""
    server = FakeServer(FakeUpstream(tokens_per_second=10))
    yield server
    server.close()


def start_proxy(tmp_path: Path, fake: FakeServer, rules: str) -> ProxyProcess:
    """A proxy process whose rule file is only re-read on SIGHUP (the poll is an hour)."""
    config = write_config(tmp_path / "config.toml", fake.url, {"alice": {"secret": KEY}},
                          f'backend = "sqlite"\nsqlite_path = "{tmp_path / "proxy.db"}"')
    config.write_text(config.read_text().replace(
        'host = "127.0.0.1"', 'host = "127.0.0.1"\nrules_poll_seconds = 3600', 1))
    (tmp_path / "rules.toml").write_text(rules)
    proxy = ProxyProcess(config, tmp_path / "rules.toml", tmp_path / "proxy.log")
    proxy.wait_ready()
    return proxy


def refuses_connections(port: int) -> bool:
    """True when nothing accepts a TCP connection on the port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


async def streams_through_sigterm(proxy: ProxyProcess) -> tuple[list[str], bool]:
    """Start STREAMS streams, SIGTERM the proxy once each has its first chunk; their texts
    and whether the proxy refused new connections meanwhile."""
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    started = asyncio.Semaphore(0)

    async def one() -> str:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=USER,
                                                      stream=True)
        text = []
        async for chunk in stream:
            if not text:
                started.release()
            text.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
        return "".join(text)

    tasks = [asyncio.create_task(one()) for _ in range(STREAMS)]
    for _ in range(STREAMS):
        await started.acquire()
    proxy.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    refused = False
    while not refused and time.monotonic() < deadline and not all(t.done() for t in tasks):
        refused = await asyncio.to_thread(refuses_connections, proxy.port)
    texts = await asyncio.gather(*tasks)
    await client.close()
    return texts, refused


def test_sigterm_finishes_streams_in_flight_refuses_new_ones_and_flushes_rows(
        tmp_path: Path, fake_server: FakeServer) -> None:
    proxy = start_proxy(tmp_path, fake_server, "pipeline = []\n")
    try:
        texts, refused = asyncio.run(streams_through_sigterm(proxy))
        code = proxy.proc.wait(30)
    finally:
        proxy.stop()
    with sqlite3.connect(tmp_path / "proxy.db") as db:
        rows = db.execute("SELECT status, completion_tokens FROM ledger").fetchall()
    assert code == 0
    assert refused  # the listener closed while the streams still ran
    assert all(t.startswith("[gpt-4o-mini] Here is my answer") for t in texts)
    assert len(rows) == STREAMS and all(s == 200 and c > 0 for s, c in rows)


def stage_of_second_ask(proxy: ProxyProcess) -> str:
    """Ask the same question twice; the stage that answered the second time."""
    client = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    return str(raw.headers["x-proxy-stage"])


def test_sighup_reloads_the_rules_at_once(tmp_path: Path, fake_server: FakeServer) -> None:
    fake_server.fake.tokens_per_second = 0
    proxy = start_proxy(tmp_path, fake_server, "pipeline = []\n")
    try:
        (tmp_path / "rules.toml").write_text(
            'pipeline = ["exact_cache"]\n[exact_cache]\nshare = "all"\n')
        before = stage_of_second_ask(proxy)  # the edit alone waits for the (hourly) poll
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        after: Any = None
        while after != "exact_cache" and time.monotonic() < deadline:
            after = stage_of_second_ask(proxy)
        alive = proxy.proc.poll() is None
    finally:
        proxy.stop()
    assert before == "upstream"
    assert after == "exact_cache"
    assert alive
