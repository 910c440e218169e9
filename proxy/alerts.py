"""Budget alerts posted to a webhook (Slack-compatible `{"text": ...}`), off the request path.

`AlertSender.notify()` only queues; a background task delivers, retrying with
backoff. Each alert has a marker (threshold + period) that is claimed in the
limit store first, so it is sent once per period across processes and replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp

from proxy.config import KeyConfig
from proxy.periods import Period
from proxy.store.limits import LimitStore, Settled, to_usd

log = logging.getLogger("proxy.alerts")
FOREVER = 10 * 365 * 86400.0


@dataclass(frozen=True, slots=True)
class Alert:
    """One threshold crossed: its once-per-period marker, message, and marker lifetime."""

    marker: str
    text: str
    ttl_seconds: float


def _usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.6f}"


def _ttl(period: Period) -> float:
    left = period.seconds_left(time.time())
    return FOREVER if left is None else left + 86400.0


def crossed(key: KeyConfig, settled: Settled, period: Period, day: Period,
            daily_usd: tuple[float, ...]) -> list[Alert]:
    """The alerts a settlement makes due: the key's soft budget, the proxy's daily spend."""
    alerts = []
    spent = to_usd(settled.spent)
    if key.soft_budget_usd is not None and spent >= key.soft_budget_usd:
        hard = f" (hard budget {_usd(key.budget_usd)})" if key.budget_usd is not None else ""
        alerts.append(Alert(
            f"soft:{key.name}:{period.name}",
            f"Proxy key '{key.name}' has spent {_usd(spent)} in {period.name}, past its soft "
            f"budget of {_usd(key.soft_budget_usd)}{hard}.", _ttl(period)))
    day_total = to_usd(settled.day_total)
    for threshold in daily_usd:
        if day_total >= threshold:
            alerts.append(Alert(
                f"daily:{threshold:g}:{day.name}",
                f"The proxy has spent {_usd(day_total)} on {day.name.removeprefix('day:')}, "
                f"past the daily threshold of {_usd(threshold)}.", _ttl(day)))
    return alerts


class AlertSender:
    """Delivers alerts to `url` from background tasks, each once per marker."""

    def __init__(self, url: str, session: aiohttp.ClientSession, claims: LimitStore,
                 attempts: int = 5, first_delay: float = 0.5) -> None:
        self.url, self.session, self.claims = url, session, claims
        self.attempts, self.first_delay = attempts, first_delay
        self._seen: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self, alerts: list[Alert]) -> None:
        """Queue delivery of the alerts not yet sent by this process; never blocks."""
        for alert in alerts:
            if alert.marker not in self._seen:
                self._seen.add(alert.marker)
                task = asyncio.create_task(self._deliver(alert), name="alert")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _deliver(self, alert: Alert) -> None:
        try:
            if not await self.claims.claim("alert:" + alert.marker, alert.ttl_seconds):
                return
        except Exception:
            log.exception("could not claim alert %s; sending it anyway", alert.marker)
        timeout = aiohttp.ClientTimeout(total=5)
        for attempt in range(self.attempts):
            try:
                async with self.session.post(self.url, json={"text": alert.text},
                                             timeout=timeout) as resp:
                    if resp.status < 300:
                        log.info("alert sent: %s", alert.text)
                        return
                    problem = f"HTTP {resp.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = type(exc).__name__
            log.warning("alert webhook failed (%s), attempt %d/%d", problem, attempt + 1,
                        self.attempts)
            await asyncio.sleep(self.first_delay * 2 ** attempt)
        log.error("alert not delivered after %d attempts: %s", self.attempts, alert.text)

    async def aclose(self) -> None:
        """Give pending deliveries a moment, then stop them."""
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2.0)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
