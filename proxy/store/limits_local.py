"""In-process rate-limit windows and budget counters for a single proxy process.

Everything is decided synchronously on the event loop (no awaits between check and
count), which makes each check atomic. Spend totals are loaded from and written to
sqlite (`SqliteSpend`) so they survive restarts; without a journal (the fallback
while Redis is down) they live in memory only.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from proxy.periods import Period
from proxy.store.limits import ALL_KEYS, WINDOW_SECONDS, Ask, Limits, Settled, Verdict, Window
from proxy.store.spend import SqliteSpend


class ExpiringLog:
    """Weighted entries that leave after the time-to-live given when they were added.

    Entries are kept in expiry order (each log always uses the same time-to-live), so
    expired ones are swept from the front; `total` is the sum of live weights.
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[float, str]] = deque()
        self._live: dict[str, int] = {}
        self.total = 0

    def sweep(self, now: float) -> int:
        """Drop expired entries; return the live total."""
        queue, live = self._queue, self._live
        while queue and (queue[0][0] <= now or queue[0][1] not in live):
            _, token = queue.popleft()
            self.total -= live.pop(token, 0)
        return self.total

    def add(self, token: str, weight: int, ttl: float, now: float) -> None:
        """Add an entry that expires `ttl` seconds from `now`."""
        self._queue.append((now + ttl, token))
        self._live[token] = weight
        self.total += weight

    def set(self, token: str, weight: int) -> None:
        """Change a live entry's weight (no-op when it is gone)."""
        old = self._live.get(token)
        if old is not None:
            self._live[token] = weight
            self.total += weight - old

    def remove(self, token: str) -> int:
        """Remove an entry; return its weight (0 when it was gone)."""
        weight = self._live.pop(token, 0)
        self.total -= weight
        return weight

    def reset_seconds(self, now: float) -> float:
        """Seconds until the oldest live entry leaves (0 when empty)."""
        self.sweep(now)
        return max(0.0, self._queue[0][0] - now) if self._queue else 0.0


@dataclass
class _KeyWindows:
    requests: ExpiringLog = field(default_factory=ExpiringLog)
    tokens: ExpiringLog = field(default_factory=ExpiringLog)
    inflight: ExpiringLog = field(default_factory=ExpiringLog)
    reserved: ExpiringLog = field(default_factory=ExpiringLog)


def _window(log: ExpiringLog, limit: int | None, now: float) -> Window | None:
    return Window(limit, log.sweep(now), log.reset_seconds(now)) if limit else None


class LocalLimits:
    """LimitStore kept in this process; spend persisted through an optional journal."""

    def __init__(self, journal: SqliteSpend | None = None) -> None:
        self.journal = journal
        self._keys: defaultdict[str, _KeyWindows] = defaultdict(_KeyWindows)
        self._spend: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._markers: dict[str, float] = {}

    async def start(self) -> None:
        """Load stored spend totals."""
        if self.journal is not None:
            self._spend.update(await self.journal.start())

    def observe_spend(self, key: str, period: str, nanos: int) -> None:
        """Raise a known spend total to what another store reported (fallback seeding)."""
        self._spend[(key, period)] = max(self._spend[(key, period)], nanos)

    async def admit(self, key: str, token: str, limits: Limits, lease_seconds: float) -> Verdict:
        """Check rpm and concurrency and, when allowed, count the request (also reads tpm)."""
        now = time.monotonic()
        windows = self._keys[key]
        requests = _window(windows.requests, limits.rpm, now)
        tokens = _window(windows.tokens, limits.tpm, now)
        if requests is not None and requests.remaining == 0:
            return Verdict(False, "rpm", requests, tokens, retry_after=requests.reset_seconds)
        if limits.max_concurrent and windows.inflight.sweep(now) >= limits.max_concurrent:
            return Verdict(False, "concurrency", requests, tokens, retry_after=1.0)
        if limits.max_concurrent:
            windows.inflight.add(token, 1, lease_seconds, now)
        if requests is not None:
            windows.requests.add(token, 1, WINDOW_SECONDS, now)
            requests = Window(requests.limit, requests.used + 1,
                              windows.requests.reset_seconds(now))
        return Verdict(True, None, requests, tokens)

    async def finish(self, key: str, token: str) -> None:
        """Free the request's concurrency slot."""
        self._keys[key].inflight.remove(token)

    async def reserve(self, key: str, token: str, ask: Ask) -> Verdict:
        """Check tpm and the budget and, when both fit, hold the tokens and the cost."""
        now = time.monotonic()
        windows = self._keys[key]
        tokens = _window(windows.tokens, ask.tpm, now)
        spent = self._spend[(key, ask.period.name)]
        reserved = windows.reserved.sweep(now)
        if tokens is not None and tokens.used + ask.tokens > tokens.limit:
            return Verdict(False, "tpm", None, tokens, retry_after=tokens.reset_seconds,
                           spent=spent, reserved=reserved)
        if ask.budget is not None and spent + reserved + ask.cost > ask.budget:
            return Verdict(False, "budget", None, tokens, spent=spent, reserved=reserved)
        if tokens is not None:
            windows.tokens.add(token, ask.tokens, WINDOW_SECONDS, now)
            tokens = Window(tokens.limit, tokens.used + ask.tokens,
                            windows.tokens.reset_seconds(now))
        windows.reserved.add(token, ask.cost, ask.lease_seconds, now)
        return Verdict(True, None, None, tokens, spent=spent, reserved=reserved + ask.cost)

    async def settle(self, key: str, token: str, tokens: int, cost: int, period: Period,
                     day: Period) -> Settled:
        """Replace the reservation by what was really used (0, 0 releases it)."""
        windows = self._keys[key]
        windows.tokens.set(token, tokens)
        windows.reserved.remove(token)
        return self.add_spend(key, cost, period, day)

    def add_spend(self, key: str, cost: int, period: Period, day: Period) -> Settled:
        """Count settled spend for the key's period and the proxy's day."""
        if cost:
            self._spend[(key, period.name)] += cost
            self._spend[(ALL_KEYS, day.name)] += cost
            if self.journal is not None:
                self.journal.add(key, period.name, cost)
                self.journal.add(ALL_KEYS, day.name, cost)
        return Settled(self._spend[(key, period.name)], self._spend[(ALL_KEYS, day.name)])

    async def spent(self, key: str, period: str) -> int:
        """Settled spend of a key in a period."""
        return self._spend.get((key, period), 0)

    async def claim(self, marker: str, ttl_seconds: float) -> bool:
        """True once per marker: through sqlite when journaled, else in memory."""
        if self.journal is not None:
            return await self.journal.claim(marker, ttl_seconds)
        now = time.time()
        if self._markers.get(marker, 0.0) > now:
            return False
        self._markers[marker] = now + ttl_seconds
        return True

    async def aclose(self) -> None:
        """Write pending spend."""
        if self.journal is not None:
            await self.journal.close()
