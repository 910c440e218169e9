"""Model routing: rewrite `model` by ordered rules on what the request looks like.

    [route]
    aliases = { auto = "gpt-4o-mini" }    # client-facing names; value = model when no rule matches

    [[route.rules]]
    name = "depth"
    model = "gpt-4o"
    confidence = 0.7                        # 0..1, reported with the decision
    why = "asks for analysis or planning"
    applies_to = ["auto", "gpt-4o"]         # requested models/aliases (globs); default: aliases
    when = { keywords = ["why do i", "analyze", "goal"] }   # see pipeline/conditions.py

The first enabled rule that applies to the requested model and whose conditions
hold decides; a rule only touches an explicitly named model when `applies_to`
names it. Rules routing to a model the key may not use are passed over. The
upstream client's fallback chain starts from the routed model.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.config import Section
from proxy.errors import PermissionDenied
from proxy.pipeline.conditions import (
    Conditions,
    parse_conditions,
    parse_named_rules,
    parse_timezone,
)
from proxy.pipeline.core import Context, Next, Reply
from proxy.pipeline.facts import RequestFacts
from proxy.pricing import PriceTable
from proxy.services import Services

_RULE_FIELDS = {"name", "enabled", "model", "confidence", "why", "applies_to", "when"}
ALIAS_DEFAULT_CONFIDENCE = 0.5


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Send requests for `applies_to` models that meet `when` to `model`."""

    name: str
    model: str
    confidence: float
    why: str
    applies_to: tuple[str, ...]
    when: Conditions

    def applies(self, requested: str) -> bool:
        """True when the rule may rewrite a request for `requested`."""
        return any(fnmatch.fnmatchcase(requested, p) for p in self.applies_to)


@dataclass(frozen=True, slots=True)
class RouteRules:
    """Aliases with their default models, the enabled rules in order, the time zone."""

    aliases: Mapping[str, str]
    rules: tuple[RouteRule, ...] = ()
    timezone: str | None = None


def _parse_aliases(section: Section) -> dict[str, str]:
    table = section.table.get("aliases", {})
    if not isinstance(table, Mapping):
        raise section.error("expected a table such as { auto = \"gpt-4o-mini\" }", "aliases")
    aliases = {}
    for alias, model in table.items():
        if not isinstance(model, str) or not model:
            raise section.error(f"expected a model name, got {model!r}", f"aliases.{alias}")
        aliases[str(alias)] = model
    for alias, model in aliases.items():
        if model in aliases:
            raise section.error(f"points at another alias {model!r}; name a model",
                                f"aliases.{alias}")
    return aliases


def _parse_rule(section: Section, aliases: Mapping[str, str]) -> RouteRule | None:
    section.reject_unknown(_RULE_FIELDS)
    name = section.str("name")
    if not name:
        raise section.error("every rule needs a name", "name")
    model = section.str("model")
    if not model:
        raise section.error("every rule needs the model to route to", "model")
    if model in aliases:
        raise section.error(f"{model!r} is an alias; name the model it should use", "model")
    confidence = section.float("confidence", 0.5, minimum=0.0)
    if confidence > 1.0:
        raise section.error(f"must be between 0 and 1, got {confidence}", "confidence")
    applies_to = section.strs("applies_to", tuple(aliases))
    if not applies_to:
        raise section.error("names no model or alias, so the rule never applies "
                            "(define [route] aliases or list models)", "applies_to")
    rule = RouteRule(name=name, model=model, confidence=confidence,
                     why=section.str("why", f"rule {name!r} matched"),
                     applies_to=applies_to, when=parse_conditions(section))
    return rule if section.bool("enabled", True) else None


def parse_rules(section: Section) -> RouteRules:
    """Validate the `[route]` table (raises ConfigError naming file, rule and field)."""
    section.reject_unknown({"aliases", "rules", "timezone"})
    aliases = _parse_aliases(section)
    rules = parse_named_rules(section, lambda rule: _parse_rule(rule, aliases))
    return RouteRules(aliases, tuple(rules), parse_timezone(section, "timezone", None))


class RouteStage:
    """Picks the model a request is sent with and records why and how sure."""

    name = "route"

    def __init__(self, rules: RouteRules, default_timezone: str, prices: PriceTable) -> None:
        self.rules = rules
        self.timezone = rules.timezone or default_timezone
        self.candidates = functools.lru_cache(maxsize=256)(self._candidates)
        self.alias_baseline = {
            alias: max([model, *(r.model for r in self.candidates(alias))],
                       key=lambda m: prices.price(m).cost(1000, 1000))
            for alias, model in rules.aliases.items()
        }

    def _candidates(self, requested: str) -> tuple[RouteRule, ...]:
        return tuple(r for r in self.rules.rules if r.applies(requested))

    async def __call__(self, ctx: Context, call_next: Next) -> Reply:
        requested = ctx.model
        candidates = self.candidates(requested)
        alias_model = self.rules.aliases.get(requested)
        if alias_model is not None and ctx.baseline_model is None:
            ctx.baseline_model = self.alias_baseline[requested]
        if not candidates and alias_model is None:
            ctx.decide(self.name, "keep", f"no rule applies to {requested!r}",
                       from_model=requested, to_model=requested)
            return await call_next(ctx)
        facts = RequestFacts(ctx, self.timezone)
        passed_over = []
        for rule in candidates:
            if rule.when.needs_tokens:
                await facts.settle_prompt_tokens(rule.when)
            if not rule.when.holds(facts):
                continue
            if not ctx.tenant.may_use(rule.model):
                passed_over.append(rule.name)
                continue
            self._route(ctx, "route" if rule.model != requested else "keep", rule.why,
                        rule.name, rule.confidence, rule.model, passed_over)
            return await call_next(ctx)
        if alias_model is not None:
            if not ctx.tenant.may_use(alias_model):
                raise PermissionDenied(f"The model '{requested}' routes to '{alias_model}', "
                                       "which this key may not use.", param="model",
                                       code="model_not_allowed")
            self._route(ctx, "default", f"no rule matched; {requested!r} defaults to "
                        f"{alias_model!r}", "default", ALIAS_DEFAULT_CONFIDENCE, alias_model,
                        passed_over)
        else:
            self._route(ctx, "keep", "no rule matched", None, None, requested, passed_over)
        return await call_next(ctx)

    @staticmethod
    def _route(ctx: Context, action: str, why: str, rule: str | None, confidence: float | None,
               model: str, passed_over: list[str]) -> None:
        extra = {"passed_over": passed_over} if passed_over else {}
        ctx.decide("route", action, why, rule=rule, confidence=confidence,
                   from_model=ctx.model, to_model=model, **extra)
        ctx.set_model(model)


def build(rules: RouteRules, services: Services) -> RouteStage:
    """The stage for `rules`."""
    return RouteStage(rules, services.config.server.timezone, services.prices)
