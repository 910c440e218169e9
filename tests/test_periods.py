"""Budget periods are named by their first local day and end on local midnight."""

from __future__ import annotations

import datetime as dt

import pytest

from proxy.periods import current_period


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("kind", "timezone", "now", "name", "ends"),
    [
        ("day", "UTC", "2025-03-09T10:00+00:00", "day:2025-03-09", "2025-03-10T00:00+00:00"),
        ("day", "America/New_York", "2025-03-09T03:00+00:00", "day:2025-03-08",
         "2025-03-09T05:00+00:00"),
        ("week", "UTC", "2025-03-09T23:59+00:00", "week:2025-03-03", "2025-03-10T00:00+00:00"),
        ("month", "Europe/Paris", "2025-12-31T23:30+00:00", "month:2026-01",
         "2026-01-31T23:00+00:00"),
        ("month", "UTC", "2024-02-29T12:00+00:00", "month:2024-02", "2024-03-01T00:00+00:00"),
    ],
)
def test_period_name_and_end(kind: str, timezone: str, now: str, name: str, ends: str) -> None:
    period = current_period(kind, timezone, ts(now))
    assert (period.name, period.ends_at) == (name, ts(ends))


def test_total_never_ends() -> None:
    period = current_period("total", "UTC", ts("2025-03-09T10:00+00:00"))
    assert (period.name, period.ends_at, period.seconds_left(0.0)) == ("total", None, None)


@pytest.mark.parametrize("kind", ["day", "week", "month"])
@pytest.mark.parametrize("timezone", ["UTC", "America/New_York"])
def test_period_is_right_when_asked_back_and_forth_across_a_boundary(kind: str,
                                                                     timezone: str) -> None:
    boundary = current_period(kind, timezone, ts("2025-03-30T12:00+00:00")).ends_at
    assert boundary is not None
    names = [current_period(kind, timezone, boundary + offset).name
             for offset in (-1.0, 0.0, -0.001, 3600.0, -7200.0)]
    before = current_period(kind, timezone, boundary - 1).name
    after = current_period(kind, timezone, boundary).name
    assert before != after
    assert names == [before, after, before, after, before]
