"""One multiplexed, auto-pipelined Redis connection for the per-request limit scripts.

redis-py checks a connection out of its pool for every command, writes it, waits
for the answer and checks it back in: at 64 concurrent requests in one process
that costs more than Redis' own work, and every call queues behind the others
(3 ms a call, measured). Here every caller shares one connection: commands issued
in the same event-loop turn are packed into one write, Redis answers them in
order, and the replies are handed back as they are parsed (hiredis). It is the
auto-pipelining of ioredis or StackExchange.Redis; one check is still one round
trip, but 64 checks also cost one round trip together.

Failures surface as redis-py's exceptions, built by redis-py's own error parser
(`LOADING` is a `BusyLoadingError`, `WRONGPASS` an `AuthenticationError`, both
connection errors), so the failover policy is the same as for the pooled client:
a broken connection fails every command in flight and the next command reconnects.
URL options: `redis://` or `rediss://`, user/password, db in the path or `?db=`,
and for TLS `ssl_cert_reqs=none|optional|required` and `ssl_ca_certs=PATH`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections import deque
from typing import cast
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Reply = object


def _pack(*args: str | int | bytes) -> bytes:
    """One command in the Redis wire format."""
    # hiredis' stub types the command as a 1-tuple and leaves the result unannotated
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


class _Protocol(asyncio.Protocol):
    """The wire: batches writes per loop turn and resolves waiters in reply order."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self.outbox: list[bytes] = []
        self.broken: Exception | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to write to."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, packed: bytes) -> asyncio.Future[Reply]:
        """Queue one packed command; its future resolves with the reply."""
        if self.broken is not None:
            raise self.broken
        future: asyncio.Future[Reply] = self.loop.create_future()
        if not self.outbox:
            self.loop.call_soon(self._flush)
        self.outbox.append(packed)
        self.waiting.append((future, time.monotonic()))
        if self._watchdog is None:
            self._watchdog = self.loop.call_later(self.timeout, self._check_overdue)
        return future

    def _flush(self) -> None:
        if self.transport is not None and self.outbox and self.broken is None:
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()

    def data_received(self, data: bytes) -> None:
        """Parse what arrived and hand each complete reply to the oldest waiter."""
        self.reader.feed(data)
        waiting = self.waiting
        while waiting:
            reply = self.reader.gets()
            if reply is False:
                break
            future, _ = waiting.popleft()
            if not future.done():
                if isinstance(reply, hiredis.ReplyError):
                    # redis-py's parse_error is unannotated: it returns the exception to raise
                    error = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
                    future.set_exception(error)
                else:
                    future.set_result(reply)

    def _check_overdue(self) -> None:
        self._watchdog = None
        if not self.waiting:
            return
        overdue = time.monotonic() - self.waiting[0][1] - self.timeout
        if overdue >= 0:
            self.fail(RedisTimeoutError(f"no reply from redis within {self.timeout:g} s"))
        else:
            self._watchdog = self.loop.call_later(-overdue, self._check_overdue)

    def fail(self, exc: Exception) -> None:
        """Fail every command in flight and close the connection for good."""
        if self.broken is None:
            self.broken = exc
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail whatever still waits; the next command opens a new connection."""
        self.fail(RedisConnectionError(f"connection to redis lost: {exc or 'closed'}"))


def _tls_context(options: dict[str, str]) -> ssl.SSLContext:
    """The TLS context for a rediss:// URL's `ssl_cert_reqs` and `ssl_ca_certs` options."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    required = options.get("ssl_cert_reqs", "required").lower()
    if required not in ("none", "optional", "required"):
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {required!r}")
    if required == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif required == "optional":
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class RedisMux:
    """Auto-pipelined commands and Lua scripts over one shared connection to `url`."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported redis url scheme for limits: {parsed.scheme!r} "
                             "(use redis:// or rediss://)")
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        self.tls = _tls_context(options) if parsed.scheme == "rediss" else None
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.db = int(options.get("db") or parsed.path.lstrip("/") or 0)
        self.closed = False
        self.timeout = timeout
        self._wire: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._sources: dict[str, bytes] = {}

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, wire = await loop.create_connection(lambda: _Protocol(self.timeout),
                                                       self.host, self.port, ssl=self.tls)
                setup = []
                if self.password is not None:
                    auth = ([self.username, self.password] if self.username
                            else [self.password])
                    setup.append(wire.send(_pack("AUTH", *auth)))
                if self.db:
                    setup.append(wire.send(_pack("SELECT", self.db)))
                try:
                    await asyncio.gather(*setup)
                except BaseException as exc:  # wrong password, bad db: close, then report
                    wire.fail(RedisConnectionError("redis connection closed"))
                    if isinstance(exc, ResponseError):  # a connection we cannot use
                        raise RedisConnectionError(f"redis refused the connection setup: "
                                                   f"{exc}") from exc
                    raise
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to redis at {self.host}:{self.port}: "
                                       f"{exc or type(exc).__name__}") from exc
        return wire

    async def _wire_ready(self) -> _Protocol:
        """The live connection, opened once however many callers ask at the same time."""
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._connect())
        try:
            wire = await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None
        self._wire = wire
        return wire

    async def execute(self, *args: str | int | bytes) -> Reply:
        """Send one command (pipelined with any others of this loop turn); its reply."""
        if self.closed:
            raise RedisConnectionError("redis connection closed")
        wire = self._wire
        if wire is None or wire.broken is not None:
            self._wire = None
            wire = await self._wire_ready()
        return await wire.send(_pack(*args))

    def script(self, source: str) -> str:
        """Register a Lua script; returns the sha to pass to `evalsha`."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._sources[sha] = source.encode()
        return sha

    async def evalsha(self, sha: str, keys: list[str], args: list[str | int]) -> Reply:
        """Run a registered script by sha, loading it on NOSCRIPT (after a Redis restart)."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            pass
        return await self.execute("EVAL", self._sources[sha], len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Close the connection for good; commands still in flight fail."""
        self.closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
            self._connecting = None
        if self._wire is not None:
            self._wire.fail(RedisConnectionError("redis connection closed"))
            self._wire = None
