"""Summary calls of the trim stage are billed to the requesting key (budget and tpm).

The summary is made before the budget stage; its estimate is reserved through the
same limit store first, settled to its usage after, and when the key has no room
for it the older turns are dropped instead (through the SDK against LiveProxy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from limits_support import MAX_TOKENS, admin_get

from proxy.auth import Tenant
from proxy.config import KeyConfig
from proxy.errors import UpstreamError
from proxy.pipeline.charges import KeyCharges
from proxy.pipeline.stages.budget import key_ask
from proxy.pricing import PriceTable
from proxy.store.limits_local import LocalLimits
from proxy.testing import LiveProxy, make_context

RULES = ('pipeline = ["admission", "trim", "budget"]\n[trim]\nkeep_last = 3\n'
         "summarize_every = 1\nmax_prompt_tokens = 100000\n")
LONG = "I logged a long training diary today, every set and every rep. " * 120  # ~1500 tokens
RECENT = [{"role": "user", "content": "Quick check-in."},
          {"role": "assistant", "content": "How did it go?"},
          {"role": "user", "content": "Tired but fine. Plan for tomorrow?"}]


def conversation(topic: str = "") -> list[dict[str, Any]]:
    """Two long older turns (summarized or dropped) and three short recent ones."""
    return [{"role": "user", "content": topic + LONG},
            {"role": "assistant", "content": topic + LONG}, *RECENT]


def ask(live: LiveProxy, messages: list[dict[str, Any]]) -> Any:
    return live.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, max_tokens=MAX_TOKENS)


def live_proxy(tmp_path: Path, policy: dict[str, Any]) -> LiveProxy:
    return LiveProxy(tmp_path, rules=RULES, config={"keys": {"alice": policy}})


def test_a_key_without_budget_left_causes_no_summary_call(tmp_path: Path) -> None:
    with live_proxy(tmp_path, {"budget_usd": 0.0000001}) as live:
        for topic in ("runs. ", "sleep. ", "food. "):
            with pytest.raises(openai.RateLimitError) as err:
                ask(live, conversation(topic))
            assert err.value.code == "insufficient_quota"
        assert len(live.fake.received) == 0
        assert admin_get(live.base_url, "/proxy/keys/alice")["spent_usd"] == 0


def test_the_summary_is_charged_to_the_keys_budget_and_tpm(tmp_path: Path) -> None:
    with live_proxy(tmp_path, {"budget_usd": 1.0, "tpm": 1_000_000}) as live:
        raw = ask(live, conversation())
        spent = admin_get(live.base_url, "/proxy/keys/alice")["spent_usd"]
        rows = live.ledger_rows()
    summary = next(r for r in rows if r["source"] == "summary")
    assert summary["cost_usd"] > 0 and len(rows) == 2
    assert spent == pytest.approx(sum(r["cost_usd"] for r in rows))
    used = (summary["prompt_tokens"] + summary["completion_tokens"]
            + raw.parse().usage.total_tokens)
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(1_000_000 - used)


@pytest.mark.parametrize(("policy", "limit"), [({"budget_usd": 0.0001}, "budget"),
                                               ({"tpm": 1000}, "tpm")])
def test_a_summary_the_key_has_no_room_for_falls_back_to_truncation(
        tmp_path: Path, policy: dict[str, Any], limit: str) -> None:
    with live_proxy(tmp_path, policy) as live:
        answer = ask(live, conversation()).parse()
        received = list(live.fake.received)
        rows = live.ledger_rows()
    assert answer.choices[0].message.content
    assert [m["messages"] for m in received] == [RECENT]
    trim = next(d for d in json.loads(rows[0]["trace"]) if d["stage"] == "trim")
    assert trim["action"] == "truncated" and f"{limit} limit" in trim["why"]


class FailingUpstream:
    """An upstream whose internal calls fail after the hold was taken."""

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        raise UpstreamError("upstream answered 500", status=500)


async def test_a_failed_summary_call_releases_its_hold() -> None:
    key = KeyConfig(name="alice", sha256="0" * 64, namespace="alice", budget_usd=0.001)
    limits = LocalLimits()
    charges = KeyCharges(FailingUpstream(), limits, PriceTable(), "UTC",  # type: ignore[arg-type]
                         None, ())
    call = charges.complete_for(make_context({}, tenant=Tenant.from_key(key)))
    with pytest.raises(UpstreamError):
        await call({"model": "gpt-4o-mini", "max_completion_tokens": 200,
                    "messages": [{"role": "user", "content": LONG}]})
    whole_budget = key_ask(key, 1, 0.001, "UTC", 60)
    assert (await limits.reserve("alice", "next", whole_budget)).allowed
    assert await limits.spent("alice", whole_budget.period.name) == 0
