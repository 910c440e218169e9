"""Test helpers: a live proxy + fake upstream on real ports, in a background thread.

    with LiveProxy(tmp_path, rules="pipeline = []") as live:
        client = live.client("alice")           # official openai SDK, sync
        client.chat.completions.create(...)
        live.fake.received[-1]                  # what the upstream got
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from proxy.app import create_app
from proxy.auth import Tenant
from proxy.config import Config, hash_key, parse_config
from proxy.pipeline.core import Context, Reply
from proxy.pipeline.registry import PIPELINE, PipelineHolder
from proxy.resources import RESOURCES, Resources
from proxy.server import SERVER_OPTIONS
from proxy.store.ledger import LedgerEntry
from proxy.upstream.fake import FakeUpstream

T = TypeVar("T")
S = TypeVar("S", bound="BackgroundServers")
KEYS = {"alice": "sk-test-alice", "bob": "sk-test-bob"}
REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = "sk-test-admin"


def test_config(upstream_url: str, db_path: str, extra: dict[str, Any] | None = None) -> Config:
    """A config with the fake upstream, keys alice/bob and an admin key.

    `extra` merges in per table; its `upstream` table merges into the fake's entry.
    """
    extra = dict(extra or {})
    upstream_extra = extra.pop("upstream", {})
    doc: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "upstreams": [{"name": "fake", "base_url": upstream_url, "models": ["*"],
                       "max_retries": 2, "backoff_seconds": 0.01, "first_byte_timeout": 5,
                       "total_timeout": 30, **upstream_extra}],
        "keys": {name: {"sha256": hash_key(key)} for name, key in KEYS.items()},
        "admin": {"key_sha256": hash_key(ADMIN_KEY)},
        "storage": {"backend": "sqlite", "sqlite_path": db_path},
    }
    for section, value in extra.items():
        if isinstance(value, dict) and isinstance(doc.get(section), dict):
            for k, v in value.items():
                if isinstance(v, dict) and isinstance(doc[section].get(k), dict):
                    doc[section][k] = {**doc[section][k], **v}
                else:
                    doc[section][k] = v
        else:
            doc[section] = value
    return parse_config(copy.deepcopy(doc), "test-config")


class BackgroundServers:
    """aiohttp apps served on real ports from a private event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []

    def __enter__(self: S) -> S:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Shut the servers down cleanly (cleanup contexts run) and end the thread."""
        if self._runners:
            self.run(self._cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _serve(self, app: web.Application, **options: Any) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, **options)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    async def _cleanup(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the servers' loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class FakeServer(BackgroundServers):
    """Only the fake upstream, for tests that run the proxy as a separate process."""

    def __init__(self, fake: FakeUpstream | None = None) -> None:
        super().__init__()
        self.fake = fake or FakeUpstream()
        self.url = ""

    async def _start(self) -> None:
        self.url = await self._serve(self.fake.app())


class LiveProxy(BackgroundServers):
    """A proxy and a fake upstream served from a private event loop in a thread."""

    def __init__(self, tmp_path: Path, rules: str = "pipeline = []\n",
                 config: dict[str, Any] | None = None, fake: FakeUpstream | None = None):
        super().__init__()
        self.tmp_path = Path(tmp_path)
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        self.rules_path = self.tmp_path / "rules.toml"
        self.rules_path.write_text(rules)
        self.extra = config
        self.fake = fake or FakeUpstream()
        self.base_url = ""
        self.fake_url = ""
        self.app: web.Application | None = None

    async def _start(self) -> None:
        self.fake_url = await self._serve(self.fake.app())
        self.config = test_config(self.fake_url, str(self.tmp_path / "proxy.db"), self.extra)
        self.app = create_app(self.config, str(self.rules_path))
        self.base_url = await self._serve(self.app, **SERVER_OPTIONS)

    @property
    def resources(self) -> Resources:
        """The running proxy's resources."""
        assert self.app is not None
        return self.app[RESOURCES]

    @property
    def pipeline(self) -> PipelineHolder:
        """The running proxy's pipeline holder."""
        assert self.app is not None
        return self.app[PIPELINE]

    def wait_ready(self, timeout: float = 600) -> None:
        """Wait until nothing kept is still loading (the embedder, fitted models), as
        `/ready` does: the first request then does not pay for the model's load."""
        async def settled() -> None:
            while self.resources.kept.loading():
                await asyncio.sleep(0.05)
        self.run(settled(), timeout)

    def reload_rules(self, text: str) -> bool:
        """Rewrite the rule file and reload it now (as the watcher would)."""
        self.rules_path.write_text(text)

        async def reload() -> bool:
            return self.pipeline.reload_if_changed()

        return self.run(reload())

    def key(self, name: str = "alice") -> str:
        """The plaintext key of a test tenant (or 'admin')."""
        return ADMIN_KEY if name == "admin" else KEYS[name]

    def client(self, name: str = "alice", **kwargs: Any) -> Any:
        """An official sync `openai.OpenAI` client for a tenant."""
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.key(name), max_retries=0,
                             **kwargs)

    def async_client(self, name: str = "alice", **kwargs: Any) -> Any:
        """An official `openai.AsyncOpenAI` client for a tenant."""
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.key(name),
                                  max_retries=0, **kwargs)

    def ledger_rows(self) -> list[dict[str, Any]]:
        """Every ledger row so far (flushed first)."""
        return self.run(self.resources.ledger.rows())

    def wait_ledger_rows(self, count: int, status: int | None = None,
                         timeout: float = 30.0) -> list[dict[str, Any]]:
        """The ledger rows (with `status`, if given) once there are at least `count` of them,
        or those there are at `timeout`: for rows written behind the response, such as
        those of streams the client left."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [r for r in self.ledger_rows() if status is None or r["status"] == status]
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def make_context(body: dict[str, Any], headers: dict[str, str] | None = None,
                 tenant: Tenant | None = None) -> Context:
    """A Context for unit-testing a stage without HTTP (tenant 'alice' by default)."""
    return Context(request_id="req_test", tenant=tenant or Tenant("alice", "0" * 64, "alice"),
                   body=body, headers=headers or {})


async def upstream_stub(ctx: Context) -> Reply:
    """A terminal for unit tests: answers 'upstream' without any network."""
    return Reply(body=b"{}", stage="upstream", model=ctx.model)


def sample_entry(**fields: Any) -> LedgerEntry:
    """A ledger row for tests: a 200 from upstream for alice on gpt-4o unless overridden."""
    row: dict[str, Any] = {
        "request_id": "req_test", "ts": 1_740_823_200.0, "tenant": "alice", "namespace": "alice",
        "requested_model": "gpt-4o", "model": "gpt-4o", "stage": "upstream",
        "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "baseline_usd": 0.0,
        "latency_ms": 1.0, "status": 200, "stream": False, "trace": "[]",
    }
    row.update(fields)
    return LedgerEntry(**row)


def insert_entries(live: LiveProxy, entries: list[LedgerEntry]) -> None:
    """Record ledger rows in a running proxy and flush them (as requests would)."""

    async def go() -> None:
        for entry in entries:
            live.resources.ledger.record(entry)
        await live.resources.ledger.flush()

    live.run(go())


def admin_get(live: LiveProxy, path: str, key: str = "admin") -> tuple[int, Any]:
    """GET a proxy path with a key; (status, parsed JSON or text)."""
    return admin_call(live, "GET", path, key)


def admin_call(live: LiveProxy, method: str, path: str, key: str = "admin") -> tuple[int, Any]:
    """Call a proxy path (`/v1/...`) with a key's token; (status, parsed JSON or text)."""
    import urllib.error
    import urllib.request

    import orjson

    request = urllib.request.Request(live.base_url.removesuffix("/v1") + path, method=method,
                                     headers={"Authorization": f"Bearer {live.key(key)}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, body, kind = resp.status, resp.read(), resp.headers.get_content_type()
    except urllib.error.HTTPError as err:
        status, body, kind = err.code, err.read(), err.headers.get_content_type()
    return status, orjson.loads(body) if kind == "application/json" else body.decode()


def redis_test_prefix() -> str:
    """A fresh key prefix for a test on the machine's shared redis-server."""
    return f"test-{secrets.token_hex(6)}:"


def drop_redis_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every key under `prefix` (never FLUSHDB: other tests share the server)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
