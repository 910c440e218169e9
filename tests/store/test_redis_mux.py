"""The auto-pipelined Redis connection behind the limit checks, against real redis-servers."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis
from limits_support import OwnRedis, free_port, own_redis  # noqa: F401  (fixture)
from redis.exceptions import AuthenticationError, BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.store.redis_mux import RedisMux
from proxy.testing import REDIS_URL


@pytest.fixture
async def mux() -> AsyncIterator[RedisMux]:
    connection = RedisMux(REDIS_URL, 2.0)
    yield connection
    await connection.aclose()


async def test_concurrent_commands_each_get_their_own_reply(mux: RedisMux) -> None:
    replies = await asyncio.gather(*(mux.execute("ECHO", f"message {i}") for i in range(500)))
    assert replies == [f"message {i}".encode() for i in range(500)]


async def test_concurrent_increments_all_land(mux: RedisMux) -> None:
    key = "test:mux:" + secrets.token_hex(6)
    try:
        counts = await asyncio.gather(*(mux.execute("INCR", key) for _ in range(300)))
        assert sorted(counts) == list(range(1, 301))  # type: ignore[type-var]
    finally:
        await mux.execute("DEL", key)


async def test_error_reply_raises_and_the_connection_stays_usable(mux: RedisMux) -> None:
    results = await asyncio.gather(mux.execute("ECHO", "before"), mux.execute("NOSUCHCOMMAND"),
                                   mux.execute("ECHO", "after"), return_exceptions=True)
    assert results[0] == b"before" and results[2] == b"after"
    assert isinstance(results[1], ResponseError) and "unknown command" in str(results[1])
    assert await mux.execute("PING") == b"PONG"


async def test_script_runs_when_redis_does_not_know_it_yet(own_redis: OwnRedis) -> None:  # noqa: F811
    connection = RedisMux(own_redis.url, 2.0)
    try:
        sha = connection.script("return {tonumber(ARGV[1]) * 2, KEYS[1]}")
        assert await connection.evalsha(sha, ["k"], [21]) == [42, b"k"]  # NOSCRIPT -> EVAL
        await connection.execute("SCRIPT", "LOAD", "return {tonumber(ARGV[1]) * 2, KEYS[1]}")
        assert await connection.evalsha(sha, ["j"], [5]) == [10, b"j"]
    finally:
        await connection.aclose()


async def test_password_and_database_from_the_url() -> None:
    server = OwnRedis(password="s3cret")
    server.start()
    try:
        connection = RedisMux(server.url.replace("/0", "/3"), 2.0)
        await connection.execute("SET", "where", "db3")
        await connection.aclose()
        check = redis.Redis(port=server.port, password="s3cret", db=3)
        assert check.get("where") == b"db3"
        wrong = RedisMux(f"redis://:wrong@127.0.0.1:{server.port}/0", 2.0)
        for _ in range(20):  # a connection error (the failover policy applies), not a leak
            with pytest.raises(AuthenticationError):
                await wrong.execute("PING")
        await wrong.aclose()
        for _ in range(100):  # until the server has seen the closed sockets
            if check.info("clients")["connected_clients"] == 1:  # only `check` itself
                break
            await asyncio.sleep(0.05)
        assert check.info("clients")["connected_clients"] == 1
        bad_db = RedisMux(server.url.replace("/0", "?db=99999"), 2.0)
        with pytest.raises(RedisConnectionError, match="DB index is out of range"):
            await bad_db.execute("PING")
        await bad_db.aclose()
    finally:
        server.stop()


async def test_connection_refused_fails_fast() -> None:
    connection = RedisMux(f"redis://127.0.0.1:{free_port()}/0", 2.0)
    with pytest.raises(RedisConnectionError):
        await connection.execute("PING")


async def test_silent_server_times_out_every_waiting_command() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = RedisMux(f"redis://127.0.0.1:{port}/0", 0.2)
    try:
        results = await asyncio.gather(*(connection.execute("PING") for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results)
    finally:
        await connection.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_reconnects_after_redis_comes_back(own_redis: OwnRedis) -> None:  # noqa: F811
    connection = RedisMux(own_redis.url, 2.0)
    try:
        assert await connection.execute("SET", "kept", "no") == b"OK"
        own_redis.stop()
        with pytest.raises(RedisConnectionError):
            await connection.execute("PING")
        own_redis.start()
        assert await connection.execute("PING") == b"PONG"
    finally:
        await connection.aclose()


async def test_bad_url_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="scheme"):
        RedisMux("unix:///run/redis.sock", 1.0)


async def test_loading_redis_raises_a_connection_error() -> None:
    replies = iter([b"-LOADING Redis is loading the dataset in memory\r\n"])

    async def loading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(next(replies))
        await writer.drain()

    server = await asyncio.start_server(loading, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = RedisMux(f"redis://127.0.0.1:{port}/0", 2.0)
    try:
        with pytest.raises(BusyLoadingError):  # a ConnectionError: failover applies
            await connection.execute("PING")
    finally:
        await connection.aclose()
        server.close()
        await server.wait_closed()


async def test_closed_mux_refuses_commands(mux: RedisMux) -> None:
    await mux.execute("PING")
    await mux.aclose()
    with pytest.raises(RedisConnectionError, match="closed"):
        await mux.execute("PING")
