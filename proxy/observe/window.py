"""The time window and scope of a stats query, parsed from query strings or CLI flags.

Times are unix seconds or ISO 8601 dates/datetimes (naive ones are UTC), from
1970-01-01 to 9999-12-31 (finite: no nan or inf). A date-only `to` includes that
whole day. Without `from`, a window starts 30 days before `to` (or now).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass

DEFAULT_DAYS = 30
DAY = 86400.0
EARLIEST = 0.0  # 1970-01-01T00:00:00Z
LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second datetime can show


class WindowError(ValueError):
    """A `from`/`to` value that is not a time in range; `param` names which one."""

    def __init__(self, message: str, param: str = "from") -> None:
        super().__init__(message)
        self.param = param


def parse_time(value: str, *, end_of_day: bool = False) -> float:
    """Unix seconds for `value`; a bare date is its midnight (UTC), or the next if `end_of_day`.

    Raises WindowError for text that is no time, and for times outside EARLIEST..LATEST.
    """
    text = value.strip()
    try:
        ts = float(text)
    except ValueError:
        ts = _iso_seconds(text, value, end_of_day)
    if not (math.isfinite(ts) and EARLIEST <= ts <= LATEST):
        raise WindowError(f"expected a time between 1970-01-01 and 9999-12-31, got {value!r}")
    return ts


def _iso_seconds(text: str, value: str, end_of_day: bool) -> float:
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
            return min(start.timestamp() + DAY, LATEST) if end_of_day else start.timestamp()
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WindowError(f"expected unix seconds or an ISO date/datetime, got {value!r}") \
            from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def _parse_param(value: str, param: str, *, end_of_day: bool = False) -> float:
    try:
        return parse_time(value, end_of_day=end_of_day)
    except WindowError as exc:
        raise WindowError(f"'{param}': {exc}", param) from None


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
        stop = _parse_param(end, "to", end_of_day=True) if end else now + 1.0
        begin = _parse_param(start, "from") if start else stop - DEFAULT_DAYS * DAY
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
