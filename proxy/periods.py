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


def current_period(kind: str, timezone: str, now: float) -> Period:
    """The period of `kind` (day|week|month|total) that contains `now` (a UTC timestamp)."""
    if kind == "total":
        return Period("total", None)
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
    midnight = dt.datetime.combine(end, dt.time(), zone)
    return Period(name, midnight.timestamp())
