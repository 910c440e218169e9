"""Model routing decisions on the stage itself, with custom and default rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.auth import Tenant
from proxy.config import KeyConfig, Section, load_rules_doc
from proxy.embed import Embedder
from proxy.errors import PermissionDenied
from proxy.pipeline.core import Decision
from proxy.pipeline.semantic.standalone import ContextClassifier, MessageAnalyzer, packaged_examples
from proxy.pipeline.stages.route import RouteRules, RouteStage, parse_rules
from proxy.pricing import PriceTable
from proxy.testing import make_context, upstream_stub

ROOT = Path(__file__).resolve().parents[2]


def rules_of(table: dict[str, Any]) -> RouteRules:
    return parse_rules(Section(table, "rules.toml", "route"))


def default_stage() -> RouteStage:
    """The shipped route rules, with the analyzer their example rules need."""
    embedder = Embedder()
    analyzer = MessageAnalyzer(embedder, ContextClassifier(embedder, packaged_examples(), 0.02))
    return RouteStage(parse_rules(load_rules_doc(ROOT / "rules" / "config.toml")
                                  .section("route")), "UTC", PriceTable(), analyzer)


def conversation(text: str, earlier_user_turns: int = 5) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a habit coach."}]
    for i in range(earlier_user_turns):
        messages += [{"role": "user", "content": f"turn {i}"},
                     {"role": "assistant", "content": "ok"}]
    return messages + [{"role": "user", "content": text}]


async def route(stage: RouteStage, model: str, text: str, earlier_user_turns: int = 5,
                headers: dict[str, str] | None = None, **extra: Any) -> tuple[str, Decision]:
    body = {"model": model, "messages": conversation(text, earlier_user_turns), **extra}
    ctx = make_context(body, headers)
    reply = await stage(ctx, upstream_stub)
    assert ctx.requested_model == model
    return reply.model, ctx.trace[-1]


@pytest.mark.parametrize(
    ("model", "text", "earlier", "extra", "headers", "routed", "rule"),
    [
        ("auto", "hi there", 0, {}, None, "gpt-4o", "first-messages"),
        ("auto", "hi there", 2, {}, None, "gpt-4o", "first-messages"),
        ("auto", "feeling tired today", 3, {}, None, "gpt-4o-mini", "simple"),
        ("auto", "Why do I keep failing?", 5, {}, None, "gpt-4o", "needs-depth"),
        ("auto", "help me plan my week", 5, {}, None, "gpt-4o", "needs-depth"),
        ("auto", "what patterns do you see in my week", 5, {}, None, "gpt-4o", "needs-depth"),
        ("auto", " ".join(["word"] * 70), 5, {}, None, "gpt-4o", "long-message"),
        ("coach", "feeling tired today", 5, {}, None, "gpt-4o-mini", "simple"),
        ("auto", "hi", 0, {}, {"x-proxy-optimize-for": "cost"}, "gpt-4o-mini", "optimize-cost"),
        ("auto", "hi", 5, {"metadata": {"optimize_for": "quality"}}, None, "gpt-4o",
         "optimize-quality"),
        ("auto", " ".join(["so"] * 40), 5, {}, None, "gpt-4o-mini", "simple"),
    ],
)
async def test_default_rules_route_the_coaching_app(
        model: str, text: str, earlier: int, extra: dict[str, Any],
        headers: dict[str, str] | None, routed: str, rule: str) -> None:
    used, decision = await route(default_stage(), model, text, earlier, headers, **extra)
    assert (used, decision.data["rule"]) == (routed, rule)
    assert decision.data["to_model"] == routed and decision.data["from_model"] == model
    assert 0 <= decision.data["confidence"] <= 1 and decision.why


async def test_explicit_model_is_left_alone_by_default() -> None:
    used, decision = await route(default_stage(), "gpt-4o", "ok cool")
    assert used == "gpt-4o" and decision.action == "keep"


async def test_downgrade_rule_touches_explicit_models_it_names() -> None:
    stage = RouteStage(rules_of({"rules": [{
        "name": "downgrade", "model": "gpt-4o-mini", "confidence": 0.7,
        "applies_to": ["gpt-4o"], "when": {"max_words": 4}}]}), "UTC", PriceTable())
    assert (await route(stage, "gpt-4o", "ok cool"))[0] == "gpt-4o-mini"
    assert (await route(stage, "gpt-4o", "tell me more about protein and sleep"))[0] == "gpt-4o"
    assert (await route(stage, "gpt-4.1", "ok cool"))[0] == "gpt-4.1"


async def test_prompt_token_rule_counts_the_whole_request() -> None:
    stage = RouteStage(rules_of({"aliases": {"auto": "gpt-4o-mini"}, "rules": [{
        "name": "big", "model": "gpt-4o", "when": {"min_tokens": 2000}}]}), "UTC", PriceTable())
    assert (await route(stage, "auto", "hi"))[0] == "gpt-4o-mini"
    assert (await route(stage, "auto", "hi " * 3000))[0] == "gpt-4o"
    assert (await route(stage, "auto", "hello " * 500))[0] == "gpt-4o-mini"  # 3 kB, ~500 tokens


async def test_tools_and_response_format_conditions() -> None:
    stage = RouteStage(rules_of({"aliases": {"auto": "gpt-4o-mini"}, "rules": [
        {"name": "tools", "model": "gpt-4.1", "when": {"tools": True}},
        {"name": "schema", "model": "gpt-4o", "when": {"response_format": ["json_schema"]}}]}),
        "UTC", PriceTable())
    tool = {"type": "function", "function": {"name": "log_habit"}}
    assert (await route(stage, "auto", "hi", tools=[tool]))[0] == "gpt-4.1"
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert (await route(stage, "auto", "hi", response_format=schema))[0] == "gpt-4o"


async def test_rule_to_a_model_the_key_may_not_use_is_passed_over() -> None:
    key = KeyConfig(name="mini-only", sha256="0" * 64, namespace="m",
                    allowed_models=("auto", "gpt-4o-mini"))
    ctx = make_context({"model": "auto", "messages": conversation("hi", 0)},
                       tenant=Tenant.from_key(key))
    reply = await default_stage()(ctx, upstream_stub)
    assert reply.model == "gpt-4o-mini"
    assert ctx.trace[-1].data["passed_over"] == ["first-messages"]


async def test_alias_defaulting_to_a_forbidden_model_is_refused() -> None:
    stage = RouteStage(rules_of({"aliases": {"auto": "gpt-4o"}}), "UTC", PriceTable())
    key = KeyConfig(name="mini-only", sha256="0" * 64, namespace="m",
                    allowed_models=("auto", "gpt-4o-mini"))
    ctx = make_context({"model": "auto", "messages": conversation("hi")},
                       tenant=Tenant.from_key(key))
    with pytest.raises(PermissionDenied):
        await stage(ctx, upstream_stub)


async def test_alias_requests_are_priced_at_the_dearest_model_they_can_reach() -> None:
    stage = default_stage()
    ctx = make_context({"model": "auto", "messages": [{"role": "user", "content": "ok"}]})
    await stage(ctx, upstream_stub)
    assert ctx.baseline_model == "gpt-4o"


async def test_no_rule_matching_falls_back_to_the_alias_default() -> None:
    rules = parse_rules(Section({"aliases": {"auto": "gpt-4o-mini"}, "rules": [
        {"name": "long", "model": "gpt-4o", "when": {"min_words": 60}}]}, "rules.toml", "route"))
    used, decision = await route(RouteStage(rules, "UTC", PriceTable()), "auto", "so so so")
    assert (used, decision.data["rule"], decision.action) == ("gpt-4o-mini", "default", "default")
