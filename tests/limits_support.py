"""Helpers for the limits and budget tests: Redis prefixes, own redis-servers, proxy processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.config import hash_key
from proxy.testing import ADMIN_KEY, drop_redis_prefix, redis_test_prefix
from proxy.upstream.fake import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
LIMITS_RULES = 'pipeline = ["admission", "budget"]\n'


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A random key prefix on the machine's Redis; its keys are deleted afterwards."""
    prefix = redis_test_prefix()
    yield prefix
    drop_redis_prefix(prefix)


class OwnRedis:
    """A redis-server of the test's own on a free port, which the test may stop and restart."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its redis:// URL."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it answers."""
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("own redis-server did not start")

    def stop(self) -> None:
        """Kill it (as an outage would)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    """A private redis-server, killed at the end."""
    server = OwnRedis()
    server.start()
    yield server
    server.stop()


class FakeServer:
    """The fake upstream served from a thread, for proxies running as processes."""

    def __init__(self, fake: FakeUpstream) -> None:
        from aiohttp import web

        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.runner = web.AppRunner(fake.app(), access_log=None)

        async def start() -> int:
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", 0).start()
            return int(self.runner.addresses[0][1])

        self.url = f"http://127.0.0.1:{self.run(start())}/v1"

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the server's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        """Stop serving."""
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def write_config(path: Path, upstream: str, keys: dict[str, dict[str, Any]], storage: str,
                 extra: str = "") -> Path:
    """A config.toml for proxy processes: the fake upstream, `keys` (name -> policy with
    a `secret`), the test admin key, and a `[storage]` body."""
    lines = ["[server]", 'host = "127.0.0.1"', "", "[[upstreams]]", 'name = "fake"',
             f'base_url = "{upstream}"', "max_retries = 0", "", "[admin]",
             f'key_sha256 = "{hash_key(ADMIN_KEY)}"', "keys_sync_seconds = 0.2", ""]
    for name, policy in keys.items():
        lines.append(f"[keys.{name}]")
        lines.append(f'sha256 = "{hash_key(policy["secret"])}"')
        lines += [f"{k} = {v!r}" for k, v in policy.items() if k != "secret"]
        lines.append("")
    lines += ["[storage]", storage, "", extra]
    path.write_text("\n".join(lines))
    return path


class ProxyProcess:
    """`python -m proxy serve` in a subprocess on a free port."""

    def __init__(self, config: Path, rules: Path, log: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--rules",
             str(rules), "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for /health."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError("proxy did not become healthy")

    def stop(self) -> None:
        """Stop it cleanly (SIGTERM -> aiohttp shutdown, spend flushed)."""
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def start_proxies(n: int, config: Path, rules: Path, logs: Path) -> list[ProxyProcess]:
    """Start `n` proxy processes and wait until all answer."""
    procs = [ProxyProcess(config, rules, logs / f"proxy{i}.log") for i in range(n)]
    try:
        for proc in procs:
            proc.wait_ready()
    except Exception:
        for proc in procs:
            proc.stop()
        raise
    return procs


PROMPT = [{"role": "user", "content": "Tell me something about budgets"}]
MAX_TOKENS = 5  # the fake's answer is longer, so it stops at exactly 5: estimate == actual


def exact_cost_nanos(model: str = "gpt-4o-mini", messages: list[Any] | None = None) -> int:
    """What one PROMPT request with max_tokens=MAX_TOKENS costs, in nano-dollars."""
    from proxy import tokens
    from proxy.pricing import PriceTable
    from proxy.store.limits import to_nanos

    prompt = tokens.count_request({"model": model, "messages": messages or PROMPT})
    return to_nanos(PriceTable().cost(model, prompt, MAX_TOKENS))


async def burst(base_url: str, api_key: str, n: int, **kwargs: Any) -> list[Any]:
    """`n` concurrent chat completions through AsyncOpenAI; errors are returned, not raised."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    body = {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": MAX_TOKENS, **kwargs}

    async def one() -> Any:
        try:
            return await client.chat.completions.create(**body)
        except openai.APIStatusError as exc:
            return exc

    try:
        return list(await asyncio.gather(*(one() for _ in range(n))))
    finally:
        await client.close()


def codes(results: list[Any]) -> dict[str, int]:
    """How many results were served ('ok') and refused, by error code."""
    counts: dict[str, int] = {}
    for result in results:
        code = "ok" if not isinstance(result, Exception) else str(getattr(result, "code", None))
        counts[code] = counts.get(code, 0) + 1
    return counts


class WebhookReceiver:
    """An aiohttp server in a thread that records JSON posts; fails the first `fail_first`."""

    def __init__(self, fail_first: int = 0) -> None:
        from aiohttp import web

        self.posts: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)

        async def start() -> int:
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", 0).start()
            return int(self.runner.addresses[0][1])

        port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{port}/hook"

    async def _hook(self, request: Any) -> Any:
        from aiohttp import web

        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500)
        self.posts.append(await request.json())
        return web.Response(text="ok")

    def wait_for(self, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        """The posts once at least `count` arrived (or what came within `timeout`)."""
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.posts)

    def close(self) -> None:
        """Stop serving."""
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def admin_get(base_url: str, path: str) -> dict[str, Any]:
    """GET an admin path with the test admin key."""
    import json

    req = urllib.request.Request(base_url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def admin_send(base_url: str, method: str, path: str, body: dict[str, Any] | None = None,
               key: str = ADMIN_KEY) -> tuple[int, dict[str, Any]]:
    """Send an admin request; (status, JSON body), errors included."""
    import json

    req = urllib.request.Request(base_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))
