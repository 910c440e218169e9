"""What is left of each key's budget in its current period.

`/v1/proxy/budgets` and the `proxy_budget_remaining_usd{key}` metric read it. `refresh()`
asks the limit store for each budgeted key's settled spend (with Redis: every process's and
replica's), and the Prometheus collector, which cannot await, reports the last refresh
(`/metrics` refreshes before rendering).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from proxy.auth import KeyRing
from proxy.kept import KeptKey
from proxy.periods import current_period
from proxy.store.limits import LimitStore, to_usd


class BudgetLeft:
    """USD left per budgeted key; callable (the metrics hook) and refreshable."""

    def __init__(self, keys: KeyRing, limits: LimitStore, timezone: str) -> None:
        self.keys, self.limits, self.timezone = keys, limits, timezone
        self._left: dict[str, float] = {}

    async def refresh(self) -> Mapping[str, float]:
        """Read every budgeted key's spend this period; the USD left of each."""
        left = {}
        now = time.time()
        for tenant in self.keys.tenants():
            key = tenant.policy
            if key is None or key.budget_usd is None:
                continue
            period = current_period(key.budget_period, self.timezone, now)
            spent = to_usd(await self.limits.spent(key.name, period.name))
            left[key.name] = max(0.0, key.budget_usd - spent)
        self._left = left
        return dict(left)

    def __call__(self) -> Mapping[str, float]:
        return dict(self._left)


BUDGET_LEFT: KeptKey[BudgetLeft] = KeptKey("budget_left")
