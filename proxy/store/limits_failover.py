"""Redis limits with a policy for when Redis is unreachable.

While Redis answers, every call goes there. When a call fails (connection refused,
socket timeout), the outage is logged once and the configured policy applies:
`open` serves from in-process `LocalLimits` (each process then enforces the limits
on its own), `closed` refuses with 503. Redis is retried after a short backoff
(0.5 s doubling to 5 s, one probing request at a time), so a dead Redis adds no
latency to the other requests. Spend settled while Redis was away is added to
Redis when it is back; requests admitted locally are finished and settled locally.

A call that timed out may still have run in Redis (a stalled Redis runs the commands
queued on its socket when it resumes): such a request would hold a concurrency slot or
a budget reservation there until its lease ran out (10 minutes by default). So every
slot and reservation whose release Redis did not confirm is released there by token
once it is back (releasing one that never got there changes nothing); at most
MAX_RELEASES are kept (older ones run out with their lease).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.exceptions

from proxy.errors import Unavailable
from proxy.periods import Period
from proxy.store.limits import Ask, Limits, Settled, Verdict
from proxy.store.limits_local import LocalLimits
from proxy.store.limits_redis import RedisLimits

log = logging.getLogger("proxy.limits")
T = TypeVar("T")
# Connection trouble, and a Redis that cannot take writes now (a read-only replica after
# a failover, a master that is down) count as Redis being away.
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
              asyncio.TimeoutError, redis.exceptions.ReadOnlyError,
              redis.exceptions.MasterDownError)
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 5.0
MAX_RELEASES = 10_000
Release = Callable[[], Awaitable[Any]]


class FailoverLimits:
    """LimitStore that prefers Redis and applies `policy` (open|closed) while it is down."""

    def __init__(self, primary: RedisLimits, fallback: LocalLimits, policy: str,
                 where: str) -> None:
        self.primary, self.fallback, self.policy, self.where = primary, fallback, policy, where
        self.down_since: float | None = None
        self._retry_at = 0.0
        self._backoff = FIRST_BACKOFF
        self._probing = False
        self._local_admits: set[str] = set()
        self._local_reservations: set[str] = set()
        # (key, token, tokens, cost, period, day) to settle in Redis once it is back
        self._unsynced: list[tuple[str, str, int, int, Period, Period]] = []
        self._releases: deque[Release] = deque(maxlen=MAX_RELEASES)

    async def _primary(self, call: Callable[[], Awaitable[T]],
                       release: Release | None = None) -> tuple[bool, T | None]:
        """(True, result) when Redis answered; (False, None) when it is down or skipped.
        `release` undoes the call in Redis once it is back, should the call have failed
        there after all (a timeout)."""
        if self.down_since is not None:
            if self._probing or time.monotonic() < self._retry_at:
                return False, None
            self._probing = True
        try:
            result = await call()
        except REDIS_DOWN as exc:
            self._failed(exc)
            if release is not None:
                self._releases.append(release)
            return False, None
        finally:
            self._probing = False
        if self.down_since is not None:
            await self._recovered()
        return True, result

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self._backoff = FIRST_BACKOFF
            action = ("serving from in-process limits (each process on its own)"
                      if self.policy == "open" else "refusing requests with 503")
            log.error("redis at %s is unreachable (%s: %s); storage.redis_failure=%s: %s "
                      "until it is back", self.where, type(exc).__name__, exc, self.policy,
                      action)
        else:
            self._backoff = min(MAX_BACKOFF, self._backoff * 2)
        self._retry_at = now + self._backoff

    async def _recovered(self) -> None:
        assert self.down_since is not None
        log.warning("redis at %s is back after %.1fs; limits are shared again",
                    self.where, time.monotonic() - self.down_since)
        self.down_since = None
        while self._releases:
            try:
                await self._releases[0]()
            except REDIS_DOWN as exc:
                self._failed(exc)
                return
            self._releases.popleft()
        pending, self._unsynced = self._unsynced, []
        for i, (key, token, tokens, cost, period, day) in enumerate(pending):
            try:
                await self.primary.settle(key, token, tokens, cost, period, day)
            except REDIS_DOWN as exc:
                self._unsynced.extend(pending[i:])
                self._failed(exc)
                return

    def _refuse(self) -> Unavailable:
        return Unavailable(
            "Rate limits and budgets live in Redis, which is unreachable; this proxy is "
            "configured to refuse requests until it is back (storage.redis_failure = "
            "\"closed\"). Retry shortly.", headers={"Retry-After": "1"})

    async def admit(self, key: str, token: str, limits: Limits, lease_seconds: float) -> Verdict:
        """Check rpm and concurrency in Redis, or per policy while it is down."""
        ok, verdict = await self._primary(
            lambda: self.primary.admit(key, token, limits, lease_seconds),
            release=lambda: self.primary.finish(key, token))
        if ok:
            assert verdict is not None
            return verdict
        if self.policy == "closed":
            raise self._refuse()
        self._local_admits.add(token)
        return await self.fallback.admit(key, token, limits, lease_seconds)

    async def finish(self, key: str, token: str) -> None:
        """Free the concurrency slot where it was taken, and in Redis (now or once it is
        back) wherever Redis may hold it."""
        if token in self._local_admits:  # Redis holds it only if the admit ran there
            self._local_admits.discard(token)
            await self.fallback.finish(key, token)
            return
        ok, _ = await self._primary(lambda: self.primary.finish(key, token))
        if not ok:
            self._releases.append(lambda: self.primary.finish(key, token))

    async def reserve(self, key: str, token: str, ask: Ask) -> Verdict:
        """Check tpm and budget in Redis, or per policy while it is down."""
        ok, verdict = await self._primary(
            lambda: self.primary.reserve(key, token, ask),
            release=lambda: self.primary.settle(key, token, 0, 0, ask.period, ask.period))
        if ok:
            assert verdict is not None
            self.fallback.observe_spend(key, ask.period.name, verdict.spent)
            return verdict
        if self.policy == "closed":
            raise self._refuse()
        self._local_reservations.add(token)
        return await self.fallback.reserve(key, token, ask)

    async def settle(self, key: str, token: str, tokens: int, cost: int, period: Period,
                     day: Period) -> Settled:
        """Settle where the reservation was made; spend that Redis missed is kept for it."""
        if token in self._local_reservations:
            self._local_reservations.discard(token)
            settled = await self.fallback.settle(key, token, tokens, cost, period, day)
            ok, _ = await self._primary(
                lambda: self.primary.settle(key, token, tokens, cost, period, day))
            if not ok:
                self._unsynced.append((key, token, tokens, cost, period, day))
            return settled
        ok, remote = await self._primary(
            lambda: self.primary.settle(key, token, tokens, cost, period, day))
        if ok:
            assert remote is not None
            return remote
        self._unsynced.append((key, token, tokens, cost, period, day))
        return self.fallback.add_spend(key, cost, period, day)

    async def spent(self, key: str, period: str) -> int:
        """Settled spend from Redis (the local view while it is down)."""
        ok, nanos = await self._primary(lambda: self.primary.spent(key, period))
        return nanos if ok and nanos is not None else await self.fallback.spent(key, period)

    async def claim(self, marker: str, ttl_seconds: float) -> bool:
        """Claim in Redis; while it is down, in this process only."""
        ok, got = await self._primary(lambda: self.primary.claim(marker, ttl_seconds))
        return bool(got) if ok else await self.fallback.claim(marker, ttl_seconds)

    async def aclose(self) -> None:
        """Close Redis and the local store."""
        if self._unsynced or self._releases:
            log.error("redis still unreachable at shutdown: %d settled amounts not added "
                      "to the shared spend, %d slots or holds left to their lease",
                      len(self._unsynced), len(self._releases))
        await self.primary.aclose()
        await self.fallback.aclose()
