"""Rate-limit windows and budget spend in Redis, shared by every process and replica.

Each check is one Lua script, so check-and-count is atomic and costs one round
trip; Redis' own clock (`TIME`) dates the entries, so replicas with skewed clocks
still share one window. Per key (the `{key}` hash tag keeps them in one slot):

    P:lim:{key}:rq            zset  request token -> expiry ms          (rpm window)
    P:lim:{key}:if            zset  request token -> lease expiry ms    (concurrency)
    P:lim:{key}:tk / tkw / tks      zset expiry, hash tokens, sum       (tpm window)
    P:lim:{key}:rs / rsw / rss      zset lease, hash nanos, sum         (budget held)
    P:spend:{key}:PERIOD      int   settled nano-dollars in the period
    P:spend:{*}:day:DATE      int   the whole proxy's spend that day
"""

from __future__ import annotations

import asyncio
import time

from redis.exceptions import ResponseError

from proxy.periods import Period
from proxy.store.limits import ALL_KEYS, WINDOW_SECONDS, Ask, Limits, Settled, Verdict, Window
from proxy.store.redis_mux import RedisMux, Reply

_WINDOW_MS = int(WINDOW_SECONDS * 1000)
_KEEP_SPEND_SECONDS = 35 * 86400  # settled spend stays readable this long after its period

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function live_count(z)
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  return redis.call('ZCARD', z)
end
local function oldest(z)
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if #first == 0 then return 0 end
  return math.max(0, tonumber(first[2]) - now)
end
local function sweep(z, w, s)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 1000)
  if #old > 0 then
    local weights = redis.call('HMGET', w, unpack(old))
    local gone = 0
    for i = 1, #weights do gone = gone + (tonumber(weights[i]) or 0) end
    redis.call('ZREM', z, unpack(old))
    redis.call('HDEL', w, unpack(old))
    if gone ~= 0 then redis.call('DECRBY', s, gone) end
  end
  return tonumber(redis.call('GET', s) or '0')
end
local function add(z, w, s, token, weight, ttl)
  redis.call('ZADD', z, now + ttl, token)
  redis.call('HSET', w, token, weight)
  redis.call('INCRBY', s, weight)
  redis.call('PEXPIRE', z, ttl)
  redis.call('PEXPIRE', w, ttl)
  redis.call('PEXPIRE', s, ttl)
end
"""

# KEYS rq if tk tkw tks; ARGV token rpm concurrent tpm lease_ms window_ms
_ADMIT = _PRELUDE + """
local token, rpm, conc, tpm = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, win = tonumber(ARGV[5]), tonumber(ARGV[6])
local used_r, reset_r, used_t, reset_t = 0, 0, 0, 0
if rpm > 0 then used_r = live_count(KEYS[1]); reset_r = oldest(KEYS[1]) end
if tpm > 0 then used_t = sweep(KEYS[3], KEYS[4], KEYS[5]); reset_t = oldest(KEYS[3]) end
if rpm > 0 and used_r >= rpm then return {1, used_r, reset_r, used_t, reset_t} end
if conc > 0 then
  if live_count(KEYS[2]) >= conc then return {2, used_r, reset_r, used_t, reset_t} end
  redis.call('ZADD', KEYS[2], now + lease, token)
  redis.call('PEXPIRE', KEYS[2], lease)
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now + win, token)
  redis.call('PEXPIRE', KEYS[1], win)
  used_r = used_r + 1
  reset_r = oldest(KEYS[1])
end
return {0, used_r, reset_r, used_t, reset_t}
"""

# KEYS tk tkw tks rs rsw rss spend; ARGV token tokens tpm cost budget(-1: none) lease_ms win_ms
_RESERVE = _PRELUDE + """
local token, tokens, tpm = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local lease, win = tonumber(ARGV[6]), tonumber(ARGV[7])
local used_t, reset_t = 0, 0
if tpm > 0 then used_t = sweep(KEYS[1], KEYS[2], KEYS[3]); reset_t = oldest(KEYS[1]) end
local reserved = sweep(KEYS[4], KEYS[5], KEYS[6])
local spent = tonumber(redis.call('GET', KEYS[7]) or '0')
if tpm > 0 and used_t + tokens > tpm then return {1, used_t, reset_t, spent, reserved} end
if budget >= 0 and spent + reserved + cost > budget then
  return {2, used_t, reset_t, spent, reserved}
end
if tpm > 0 then
  add(KEYS[1], KEYS[2], KEYS[3], token, tokens, win)
  used_t = used_t + tokens
  reset_t = oldest(KEYS[1])
end
if budget >= 0 then
  add(KEYS[4], KEYS[5], KEYS[6], token, cost, lease)
  reserved = reserved + cost
end
return {0, used_t, reset_t, spent, reserved}
"""

# KEYS tkw tks rs rsw rss spend dayspend; ARGV token tokens cost spend_ttl_s day_ttl_s
_SETTLE = """
local token, cost = ARGV[1], tonumber(ARGV[3])
local old = redis.call('HGET', KEYS[1], token)
if old then
  redis.call('HSET', KEYS[1], token, ARGV[2])
  redis.call('INCRBY', KEYS[2], tonumber(ARGV[2]) - tonumber(old))
end
local held = redis.call('HGET', KEYS[4], token)
if held then
  redis.call('HDEL', KEYS[4], token)
  redis.call('ZREM', KEYS[3], token)
  redis.call('DECRBY', KEYS[5], held)
end
if cost == 0 then
  return {tonumber(redis.call('GET', KEYS[6]) or '0'), tonumber(redis.call('GET', KEYS[7]) or '0')}
end
local spent = redis.call('INCRBY', KEYS[6], cost)
local day = redis.call('INCRBY', KEYS[7], cost)
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[6], ARGV[4]) end
redis.call('EXPIRE', KEYS[7], ARGV[5])
return {spent, day}
"""


def _integers(reply: Reply) -> list[int]:
    """A limit script's answer: an array of integers."""
    if not isinstance(reply, list) or not all(isinstance(v, int) for v in reply):
        raise ResponseError(f"a limit script answered {reply!r}, not an array of integers")
    return reply


def _ttl(period: Period) -> int:
    left = period.seconds_left(time.time())
    return 0 if left is None else int(left) + _KEEP_SPEND_SECONDS


class RedisLimits:
    """LimitStore in Redis; every method is one round trip, auto-pipelined with the
    other requests' checks of the same event-loop turn."""

    def __init__(self, mux: RedisMux, prefix: str) -> None:
        self.mux = mux
        self.prefix = prefix
        self._admit = mux.script(_ADMIT)
        self._reserve = mux.script(_RESERVE)
        self._settle = mux.script(_SETTLE)

    async def start(self) -> None:
        """Connect and load the scripts now, so the first requests do not pay for it."""
        await asyncio.gather(*(self.mux.execute("SCRIPT", "LOAD", source)
                               for source in (_ADMIT, _RESERVE, _SETTLE)))

    def _lim(self, key: str, *names: str) -> list[str]:
        base = f"{self.prefix}lim:{{{key}}}:"
        return [base + n for n in names]

    def _spend_key(self, key: str, period: str) -> str:
        return f"{self.prefix}spend:{{{key}}}:{period}"

    async def admit(self, key: str, token: str, limits: Limits, lease_seconds: float) -> Verdict:
        """Check rpm and concurrency and, when allowed, count the request (also reads tpm)."""
        code, used_r, reset_r, used_t, reset_t = _integers(await self.mux.evalsha(
            self._admit, self._lim(key, "rq", "if", "tk", "tkw", "tks"),
            [token, limits.rpm or 0, limits.max_concurrent or 0, limits.tpm or 0,
             int(lease_seconds * 1000), _WINDOW_MS]))
        requests = Window(limits.rpm, used_r, reset_r / 1000) if limits.rpm else None
        tokens = Window(limits.tpm, used_t, reset_t / 1000) if limits.tpm else None
        if code == 1:
            return Verdict(False, "rpm", requests, tokens, retry_after=reset_r / 1000)
        if code == 2:
            return Verdict(False, "concurrency", requests, tokens, retry_after=1.0)
        return Verdict(True, None, requests, tokens)

    async def finish(self, key: str, token: str) -> None:
        """Free the request's concurrency slot."""
        await self.mux.execute("ZREM", self._lim(key, "if")[0], token)

    async def reserve(self, key: str, token: str, ask: Ask) -> Verdict:
        """Check tpm and the budget and, when both fit, hold the tokens and the cost."""
        code, used_t, reset_t, spent, reserved = _integers(await self.mux.evalsha(
            self._reserve, [*self._lim(key, "tk", "tkw", "tks", "rs", "rsw", "rss"),
                            self._spend_key(key, ask.period.name)],
            [token, ask.tokens, ask.tpm or 0, ask.cost,
             -1 if ask.budget is None else ask.budget, int(ask.lease_seconds * 1000),
             _WINDOW_MS]))
        tokens = Window(ask.tpm, used_t, reset_t / 1000) if ask.tpm else None
        reason = {1: "tpm", 2: "budget"}.get(code)
        return Verdict(code == 0, reason, None, tokens,
                       retry_after=reset_t / 1000 if code == 1 else 0.0,
                       spent=spent, reserved=reserved)

    async def settle(self, key: str, token: str, tokens: int, cost: int, period: Period,
                     day: Period) -> Settled:
        """Replace the reservation by what was really used (0, 0 releases it)."""
        spent, day_total = _integers(await self.mux.evalsha(
            self._settle, [*self._lim(key, "tkw", "tks", "rs", "rsw", "rss"),
                           self._spend_key(key, period.name), self._spend_key(ALL_KEYS, day.name)],
            [token, tokens, cost, _ttl(period), _ttl(day)]))
        return Settled(spent, day_total)

    async def spent(self, key: str, period: str) -> int:
        """Settled spend of a key in a period."""
        spent = await self.mux.execute("GET", self._spend_key(key, period))
        return int(spent) if isinstance(spent, bytes) else 0

    async def claim(self, marker: str, ttl_seconds: float) -> bool:
        """True exactly once per marker (until it expires), across processes."""
        return await self.mux.execute("SET", f"{self.prefix}once:{marker}", "1", "NX", "EX",
                                      max(1, int(ttl_seconds))) is not None

    async def aclose(self) -> None:
        """Close the connection."""
        await self.mux.aclose()
