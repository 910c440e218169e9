"""The time window and scope of a stats query, parsed from query strings or CLI flags.

Times are unix seconds or ISO 8601 dates/datetimes (naive ones are UTC). A
date-only `to` includes that whole day. Without `from`, a window starts 30 days
before `to` (or now).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

DEFAULT_DAYS = 30
DAY = 86400.0


class WindowError(ValueError):
    """A `from`/`to` value that is neither unix seconds nor an ISO date/datetime."""


def parse_time(value: str, *, end_of_day: bool = False) -> float:
    """Unix seconds for `value`; a bare date is its midnight (UTC), or the next if `end_of_day`."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
            return start.timestamp() + (DAY if end_of_day else 0.0)
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WindowError(f"expected unix seconds or an ISO date/datetime, got {value!r}") \
            from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC form of unix seconds."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Window:
    """[start, end) in unix seconds, and the tenant it is limited to (None: every tenant)."""

    start: float
    end: float
    tenant: str | None = None

    @classmethod
    def parse(cls, start: str | None, end: str | None, tenant: str | None = None,
              now: float | None = None) -> Window:
        """A window from optional `from`/`to` strings."""
        now = time.time() if now is None else now
        stop = parse_time(end, end_of_day=True) if end else now + 1.0
        begin = parse_time(start) if start else stop - DEFAULT_DAYS * DAY
        if begin >= stop:
            raise WindowError(f"'from' ({iso(begin)}) must be before 'to' ({iso(stop)})")
        return cls(begin, stop, tenant)

    def where(self, prefix: str = "") -> tuple[str, list[object]]:
        """SQL condition and arguments selecting this window's ledger rows."""
        sql = f"{prefix}ts >= ? AND {prefix}ts < ?"
        args: list[object] = [self.start, self.end]
        if self.tenant is not None:
            sql += f" AND {prefix}tenant = ?"
            args.append(self.tenant)
        return sql, args

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"from": iso(self.start), "to": iso(self.end), "key": self.tenant}
