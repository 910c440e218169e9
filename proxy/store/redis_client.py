"""A Redis client that fails fast, for state shared between processes (keys, ledger).

A dead Redis must not hold requests or background tasks: short socket timeouts
and no retries, so the caller's own policy (fail open or closed, retry later)
decides what happens next.
"""

from __future__ import annotations

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def fail_fast_client(url: str, timeout: float) -> Redis:
    """A pooled client whose every call gives up after `timeout` seconds, without retries."""
    pool = ConnectionPool.from_url(url, max_connections=1024, socket_timeout=timeout,
                                   socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    return Redis(connection_pool=pool)
