"""The admission and budget stages in a pipeline: what free answers count, dry runs, parsing."""

from __future__ import annotations

import pytest

from proxy.auth import Tenant
from proxy.config import ConfigError, KeyConfig, Section
from proxy.errors import RateLimited
from proxy.pipeline.core import Context, Next, Pipeline, Reply, Usage
from proxy.pipeline.stages import admission, budget
from proxy.pricing import PriceTable
from proxy.store.limits_local import LocalLimits

KEY = KeyConfig(name="alice", sha256="0" * 64, namespace="alice", rpm=2, budget_usd=1e-9)


class FreeAnswer:
    """Stands in for a pattern or cache stage: answers without going upstream."""

    name = "patterns"

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        return Reply(body=b"{}", stage=self.name, model=ctx.requested_model,
                     saved_usage=Usage(10, 10))


class Upstream:
    """A terminal that counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, ctx: Context) -> Reply:
        self.calls += 1
        return Reply(body=b"{}", usage=Usage(10, 10), model=ctx.model)


def context(dry_run: bool = False) -> Context:
    return Context(request_id="r", tenant=Tenant.from_key(KEY), dry_run=dry_run,
                   body={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


def chain(limits: LocalLimits, *middle: object, terminal: Upstream | None = None) -> Pipeline:
    stages = [admission.Admission(admission.Rules(), limits), *middle,
              budget.Budget(budget.Rules(), limits, PriceTable(), "UTC", None, ())]
    return Pipeline(stages, terminal or Upstream())  # type: ignore[arg-type]


async def test_free_answers_count_towards_rpm_but_never_reach_the_budget() -> None:
    limits, upstream = LocalLimits(), Upstream()
    pipeline = chain(limits, FreeAnswer(), terminal=upstream)
    replies = [await pipeline(context()) for _ in range(2)]
    with pytest.raises(RateLimited) as err:
        await pipeline(context())
    assert [r.stage for r in replies] == ["patterns", "patterns"]
    assert err.value.code == "rate_limit_exceeded"
    assert upstream.calls == 0
    assert await limits.spent("alice", "total") == 0
    assert replies[0].headers["x-ratelimit-remaining-requests"] == "1"


async def test_dry_run_counts_towards_rpm_but_reserves_nothing() -> None:
    limits = LocalLimits()
    ctx = context(dry_run=True)
    await chain(limits)(ctx)  # KEY's budget has no room: a real request would be refused
    assert [(d.stage, d.action) for d in ctx.trace] == [("admission", "admitted"),
                                                        ("budget", "would_reserve")]
    assert (await limits.admit("alice", "t", admission.Limits(rpm=2), 60)).requests.used == 2


@pytest.mark.parametrize(
    ("body", "default", "expected"),
    [({}, 1024, 1024), ({"max_tokens": 50}, 1024, 50), ({"max_completion_tokens": 70}, 9, 70),
     ({"max_tokens": 50, "n": 3}, 1024, 150), ({"n": 2}, 100, 200)],
)
def test_completion_tokens_asked(body: dict, default: int, expected: int) -> None:
    assert budget.completion_tokens_asked(body, default) == expected


@pytest.mark.parametrize(
    ("module", "table", "field"),
    [(budget, {"completion_estimate": 0}, "completion_estimate"),
     (budget, {"reservation_seconds": "long"}, "reservation_seconds"),
     (admission, {"lease_seconds": 0}, "lease_seconds"),
     (admission, {"rpm": 5}, "rpm")],
)
def test_bad_rules_are_refused_naming_the_field(module: object, table: dict,
                                                field: str) -> None:
    with pytest.raises(ConfigError) as err:
        module.parse_rules(Section(table, "rules.toml", module.__name__))  # type: ignore[attr-defined]
    assert field in str(err.value) and "rules.toml" in str(err.value)
