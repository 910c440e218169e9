"""Long-lived resources shared by stages and handlers (one set per worker process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiosqlite
from redis.asyncio import Redis

from proxy.auth import KeyRing
from proxy.config import Config
from proxy.pricing import PriceTable
from proxy.store.bodies import BodyLog
from proxy.store.kv import KVStore
from proxy.store.ledger import Ledger
from proxy.tasks import BackgroundTasks
from proxy.upstream.client import UpstreamClient


@dataclass
class Services:
    """What stages are built with. `state` keeps per-stage objects (caches, limiters)
    alive across rule reloads, keyed by stage name; `background` holds work that
    outlives its request (streams read on after their client left)."""

    config: Config
    prices: PriceTable
    upstream: UpstreamClient
    keys: KeyRing
    db: aiosqlite.Connection
    ledger: Ledger
    kv: KVStore
    redis: Redis | None = None
    state: dict[str, Any] = field(default_factory=dict)
    bodies: BodyLog | None = None
    background: BackgroundTasks = field(default_factory=BackgroundTasks)
