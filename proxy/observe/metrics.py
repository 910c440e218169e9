"""Prometheus metrics, fed by the ledger (one source of truth) and rendered for `/metrics`.

`Metrics.observe` is a ledger observer: it runs in the ledger's flusher, never on
the request path. Labels are aggregates (stage, model, status, key); no request
ids or bodies. Every label comes from a bounded set, since series are never freed:
stages and statuses are the proxy's, keys are the operator's, and a `model` label is
the model's name only for priced models (`ModelLabels`); any other name the client
sent is counted as "other". With several workers (`serve --workers N`) the serve command sets
PROMETHEUS_MULTIPROC_DIR before the workers start; every worker then writes its
samples there and any worker's `/metrics` reports the sum over all of them.

Budget remaining per key comes from a hook: `budget_hook()` returns the callable the
budget stage keeps (returning {key name: USD left}), or None without a budget stage;
it is called at scrape time.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from proxy.pricing import PriceTable
from proxy.store.ledger import LedgerEntry

log = logging.getLogger("proxy.metrics")
# the budget stage's {key: USD left} callable, or None when no budget stage runs
BudgetHook = Callable[[], Callable[[], Mapping[str, float]] | None]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CACHE_STAGES = frozenset({"pattern", "exact_cache", "semantic_cache"})
_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
OTHER_MODEL = "other"
MODEL_LABEL_MAX_CHARS = 64
MODEL_LABEL_LIMIT = 64


class ModelLabels:
    """The `model` label for a model name, from a bounded set.

    A model with a known price (the price table, with config.toml's additions) keeps
    its name, up to MODEL_LABEL_MAX_CHARS long; everything else is OTHER_MODEL.
    Dated snapshots are priced by prefix (`gpt-4o-2024-08-06`), so a client could
    still invent endless priced-looking names: at most MODEL_LABEL_LIMIT names are
    ever given out, first come first served, and later new names are OTHER_MODEL.
    """

    def __init__(self, prices: PriceTable, limit: int = MODEL_LABEL_LIMIT) -> None:
        self.prices = prices
        self.limit = limit
        self.named: set[str] = set()

    def __call__(self, model: str) -> str:
        """The label to count `model` under."""
        if model in self.named:
            return model
        if (len(self.named) < self.limit and len(model) <= MODEL_LABEL_MAX_CHARS
                and self.prices.price(model).known):
            self.named.add(model)
            return model
        return OTHER_MODEL


class BudgetCollector(Collector):
    """`proxy_budget_remaining_usd{key}` from the budget hook, asked at scrape time."""

    def __init__(self, budget_hook: BudgetHook) -> None:
        self.budget_hook = budget_hook

    def collect(self) -> Iterator[Metric]:
        """Ask the hook now; no hook (or a failing one) yields an empty gauge."""
        gauge = GaugeMetricFamily("proxy_budget_remaining_usd",
                                  "USD left in each key's current budget period", labels=["key"])
        hook = self.budget_hook()
        if hook is not None:
            try:
                for key, usd in sorted(hook().items()):
                    gauge.add_metric([key], float(usd))
            except Exception:
                log.exception("budget_remaining hook failed")
        yield gauge


class Metrics:
    """The proxy's Prometheus metrics (a private registry per application)."""

    def __init__(self, budget_hook: BudgetHook, prices: PriceTable) -> None:
        self.model_label = ModelLabels(prices)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("proxy_requests", "Requests by answering stage, model and status",
                                ["stage", "model", "status"], registry=r)
        self.cost = Counter("proxy_cost_usd", "USD billed upstream", ["key", "model"], registry=r)
        self.baseline = Counter("proxy_baseline_cost_usd",
                                "USD the requests would have cost without the proxy", ["key"],
                                registry=r)
        self.tokens = Counter("proxy_tokens", "Billed tokens", ["direction", "model"], registry=r)
        self.cached_tokens = Counter("proxy_cached_tokens",
                                     "Prompt tokens the upstream read from its prompt cache "
                                     "(part of the prompt tokens, billed at the cached rate)",
                                     ["model"], registry=r)
        self.cache_hits = Counter("proxy_cache_hits", "Free answers by stage", ["stage"],
                                  registry=r)
        self.tokens_saved = Counter("proxy_tokens_saved",
                                    "Prompt tokens removed by stages (tools, trim)", ["stage"],
                                    registry=r)
        self.rate_limited = Counter("proxy_rate_limited",
                                    "Requests rejected with 429 (limits, budgets, upstream)",
                                    ["key"], registry=r)
        self.upstream_latency = Histogram("proxy_upstream_latency_seconds",
                                          "Time spent waiting on the upstream", ["model"],
                                          buckets=_UPSTREAM_BUCKETS, registry=r)
        self.overhead = Histogram("proxy_overhead_seconds",
                                  "Request time not spent on the upstream",
                                  buckets=_OVERHEAD_BUCKETS, registry=r)
        self.budget = BudgetCollector(budget_hook)
        if os.environ.get(MULTIPROC_ENV):
            self.output = CollectorRegistry()
            # prometheus_client leaves the collector's __init__ unannotated
            MultiProcessCollector(self.output)  # type: ignore[no-untyped-call]
        else:
            self.output = self.registry
        self.output.register(self.budget)

    def observe(self, rows: Sequence[LedgerEntry]) -> None:
        """Count a batch of ledger rows (a ledger observer).

        Counter increments are summed per label set first, so a batch of rows costs one
        `labels().inc()` per series rather than several per row.
        """
        counts: dict[tuple[Counter, tuple[str, ...]], float] = defaultdict(float)
        latencies: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            model = self.model_label(row.model)
            counts[(self.requests, (row.stage, model, str(row.status)))] += 1
            if row.cost_usd:
                counts[(self.cost, (row.tenant, model))] += row.cost_usd
            if row.baseline_usd:
                counts[(self.baseline, (row.tenant,))] += row.baseline_usd
            if row.prompt_tokens or row.completion_tokens:
                counts[(self.tokens, ("prompt", model))] += row.prompt_tokens
                counts[(self.tokens, ("completion", model))] += row.completion_tokens
            if row.cached_tokens:
                counts[(self.cached_tokens, (model,))] += row.cached_tokens
            if row.stage in CACHE_STAGES:
                counts[(self.cache_hits, (row.stage,))] += 1
            if row.status == 429:
                counts[(self.rate_limited, (row.tenant,))] += 1
            if row.upstream_ms is not None:
                latencies[model].append(row.upstream_ms / 1000.0)
                self.overhead.observe(max(row.latency_ms - row.upstream_ms, 0.0) / 1000.0)
            elif row.status < 400:
                self.overhead.observe(row.latency_ms / 1000.0)
            if "tokens_saved" in row.trace:
                self._tokens_saved(row.trace)
        for (metric, labels), amount in counts.items():
            metric.labels(*labels).inc(amount)
        for model, seconds in latencies.items():
            histogram = self.upstream_latency.labels(model)
            for value in seconds:
                histogram.observe(value)

    def _tokens_saved(self, trace: str) -> None:
        try:
            decisions = orjson.loads(trace)
        except orjson.JSONDecodeError:
            return
        for decision in decisions:
            saved = decision.get("tokens_saved") if isinstance(decision, dict) else None
            if isinstance(saved, (int, float)) and saved > 0:
                self.tokens_saved.labels(str(decision.get("stage"))).inc(saved)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.output)
