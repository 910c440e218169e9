"""A Redis client that fails fast, for state shared between processes (keys, ledger).

A dead Redis must not hold requests or background tasks: short socket timeouts
and no retries, so the caller's own policy (fail open or closed, retry later)
decides what happens next.
"""

from __future__ import annotations

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import XReadResponse

# A stream's entries as a client here reads them: (entry id, fields), all bytes.
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def fail_fast_client(url: str, timeout: float) -> Redis:
    """A pooled client whose every call gives up after `timeout` seconds, without retries."""
    pool = ConnectionPool.from_url(url, max_connections=1024, socket_timeout=timeout,
                                   socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    return Redis(connection_pool=pool)


def text(reply: object) -> str:
    """A string reply as text. The clients here do not decode responses, so a string
    arrives as bytes; redis-py's annotations allow bytes, str and more."""
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, str):
        return reply
    raise TypeError(f"expected a string reply from redis, got {type(reply).__name__}")


def binary(reply: object) -> bytes:
    """A string reply as the bytes a client here (responses not decoded) receives."""
    if isinstance(reply, bytes):
        return reply
    raise TypeError(f"expected a bytes reply from redis, got {type(reply).__name__}")


def read_streams(answer: XReadResponse | None) -> dict[str, StreamEntries]:
    """XREAD's answer as stream name -> entries. The clients here speak RESP2, whose
    answer is a list of [stream, entries] pairs (None or [] when nothing is new)."""
    if not answer:
        return {}
    assert not isinstance(answer, dict), "a RESP3 XREAD answer from a RESP2 client"
    return {text(name): entries for name, entries in answer}
