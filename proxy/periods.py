"""Budget periods: which period an instant falls in, and when it ends.

A period is named by its first day in the configured timezone (`day:2025-03-09`,
`week:2025-03-03` (weeks start on Monday), `month:2025-03`, or `total`), so spend
counters keyed by that name reset by themselves on the boundary.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class Period:
    """One budget period: its name and the UTC timestamp it ends at (None: never)."""

    name: str
    ends_at: float | None

    def seconds_left(self, now: float) -> float | None:
        """Seconds until the period ends (None for `total`)."""
        return None if self.ends_at is None else max(0.0, self.ends_at - now)


@functools.cache
def _zone(timezone: str) -> ZoneInfo:
    return ZoneInfo(timezone)


# (kind, timezone) -> (start timestamp, period) of the last period computed: every
# request asks for the current one, and it only changes at a period boundary.
_LAST: dict[tuple[str, str], tuple[float, Period]] = {}


def current_period(kind: str, timezone: str, now: float) -> Period:
    """The period of `kind` (day|week|month|total) that contains `now` (a UTC timestamp)."""
    if kind == "total":
        return Period("total", None)
    last = _LAST.get((kind, timezone))
    if last is not None and last[0] <= now < (last[1].ends_at or 0.0):
        return last[1]
    start, period = _period_at(kind, timezone, now)
    _LAST[(kind, timezone)] = (start, period)
    return period


def _period_at(kind: str, timezone: str, now: float) -> tuple[float, Period]:
    zone = _zone(timezone)
    local = dt.datetime.fromtimestamp(now, zone)
    day = local.date()
    if kind == "day":
        start, end = day, day + dt.timedelta(days=1)
        name = f"day:{start.isoformat()}"
    elif kind == "week":
        start = day - dt.timedelta(days=day.weekday())
        end = start + dt.timedelta(days=7)
        name = f"week:{start.isoformat()}"
    elif kind == "month":
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        name = f"month:{start.strftime('%Y-%m')}"
    else:
        raise ValueError(f"unknown budget period {kind!r}; expected day, week, month or total")
    begins = dt.datetime.combine(start, dt.time(), zone).timestamp()
    midnight = dt.datetime.combine(end, dt.time(), zone)
    return begins, Period(name, midnight.timestamp())
