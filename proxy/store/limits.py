"""Rate-limit windows and budget spend per key: the interface and its shared types.

Money is counted in integer nano-dollars (1e-9 USD) so that reservations and
settlements add up exactly, in Python and in Redis' Lua alike.

Three implementations: `LocalLimits` (in-process, spend persisted in sqlite),
`RedisLimits` (atomic Lua scripts, shared by every process and replica) and
`FailoverLimits` (Redis, with the configured policy while Redis is down).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxy.periods import Period

NANOS_PER_USD = 1_000_000_000
WINDOW_SECONDS = 60.0  # rpm and tpm are sliding one-minute windows
ALL_KEYS = "*"  # pseudo key under which the whole proxy's daily spend is counted


def to_nanos(usd: float) -> int:
    """USD as integer nano-dollars."""
    return round(usd * NANOS_PER_USD)


def to_usd(nanos: int) -> float:
    """Integer nano-dollars as USD."""
    return nanos / NANOS_PER_USD


@dataclass(frozen=True, slots=True)
class Window:
    """The state of one sliding window after a check: its limit, use and reset time."""

    limit: int
    used: int
    reset_seconds: float

    @property
    def remaining(self) -> int:
        """What is left in the window."""
        return max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's request limits (None: unlimited)."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class Ask:
    """What a request wants to reserve before it goes upstream."""

    tokens: int
    cost: int
    tpm: int | None
    budget: int | None
    period: Period
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to an admission or reservation check.

    `reason` names the limit that refused (rpm, concurrency, tpm, budget); `spent`
    is the period's settled spend and `reserved` what requests in flight hold.
    """

    allowed: bool
    reason: str | None = None
    requests: Window | None = None
    tokens: Window | None = None
    retry_after: float = 0.0
    spent: int = 0
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class Settled:
    """Spend after a settlement: the key's in its period, and the proxy's today."""

    spent: int
    day_total: int


class LimitStore(Protocol):
    """Counters behind the admission and budget stages. `token` identifies one request."""

    async def admit(self, key: str, token: str, limits: Limits, lease_seconds: float) -> Verdict:
        """Check rpm and concurrency and, when allowed, count the request (also reads tpm)."""
        ...

    async def finish(self, key: str, token: str) -> None:
        """Free the request's concurrency slot."""
        ...

    async def reserve(self, key: str, token: str, ask: Ask) -> Verdict:
        """Check tpm and the budget and, when both fit, hold the tokens and the cost."""
        ...

    async def settle(self, key: str, token: str, tokens: int, cost: int, period: Period,
                     day: Period) -> Settled:
        """Replace the reservation by what was really used (0, 0 releases it)."""
        ...

    async def spent(self, key: str, period: str) -> int:
        """Settled spend of a key in a period."""
        ...

    async def claim(self, marker: str, ttl_seconds: float) -> bool:
        """True exactly once per marker (until it expires), across processes."""
        ...

    async def aclose(self) -> None:
        """Persist what is pending and release connections."""
        ...
