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

    [[route.rules]]
    name = "needs-depth"
    model = "gpt-4o"
    examples = "packaged:strong"            # or ["why do i keep ...", ...]: see route_examples
    mode = "shadow"                         # act (default) | shadow | split (+ percent = 20)

The first enabled rule that applies to the requested model and whose conditions
hold decides; a rule only touches an explicitly named model when `applies_to`
names it. A rule with `examples` holds when the request is nearer to its examples
than to any other example rule's, by `[route] examples_margin`. Rules routing to
a model the key may not use are passed over. A rule in `shadow` mode (or outside
its `split` share) records what it would have done (`action = "shadow"`) and the
next rules decide. The upstream client's fallback chain starts from the routed model.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config import Section
from proxy.errors import PermissionDenied
from proxy.pipeline.conditions import (
    Conditions,
    RuleMode,
    parse_conditions,
    parse_mode,
    parse_named_rules,
    parse_timezone,
)
from proxy.pipeline.core import Context, Next, Reply
from proxy.pipeline.facts import RequestFacts
from proxy.pipeline.semantic.route_examples import (
    ExampleRouter,
    Nearest,
    RouteExample,
    packaged_label,
    packaged_route_examples,
)
from proxy.pipeline.semantic.standalone import MessageAnalyzer, analyzer_of
from proxy.pricing import PriceTable
from proxy.resources import Resources

_RULE_FIELDS = {"name", "enabled", "model", "confidence", "why", "applies_to", "when",
                "examples", "mode", "percent"}
ALIAS_DEFAULT_CONFIDENCE = 0.5
DEFAULT_MARGIN = 0.01


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Send requests for `applies_to` models that meet `when` to `model`."""

    name: str
    model: str
    confidence: float
    why: str
    applies_to: tuple[str, ...]
    when: Conditions
    examples: tuple[RouteExample, ...] = ()
    mode: RuleMode = RuleMode()

    def applies(self, requested: str) -> bool:
        """True when the rule may rewrite a request for `requested`."""
        return any(fnmatch.fnmatchcase(requested, p) for p in self.applies_to)


@dataclass(frozen=True, slots=True)
class RouteRules:
    """Aliases with their default models, the enabled rules in order, the time zone."""

    aliases: Mapping[str, str]
    rules: tuple[RouteRule, ...] = ()
    timezone: str | None = None
    examples_margin: float = DEFAULT_MARGIN


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
                     applies_to=applies_to, when=parse_conditions(section),
                     examples=_parse_examples(section, name), mode=parse_mode(section))
    return rule if section.bool("enabled", True) else None


def _parse_examples(section: Section, name: str) -> tuple[RouteExample, ...]:
    """`examples`: a list of example requests, or "packaged:strong" / "packaged:cheap"."""
    value = section.table.get("examples")
    if value is None:
        return ()
    if isinstance(value, str):
        label = packaged_label(value)
        found = [RouteExample(e.text, name) for e in packaged_route_examples(label)] \
            if label else []
        if not found:
            raise section.error(f"expected a list of example requests or "
                                f"\"packaged:strong\" / \"packaged:cheap\", got {value!r}",
                                "examples")
        return tuple(found)
    texts = section.strs("examples")
    if not texts:
        raise section.error("lists no example requests", "examples")
    return tuple(RouteExample(text, name) for text in texts)


def parse_rules(section: Section) -> RouteRules:
    """Validate the `[route]` table (raises ConfigError naming file, rule and field)."""
    section.reject_unknown({"aliases", "rules", "timezone", "examples_margin"})
    aliases = _parse_aliases(section)
    rules = parse_named_rules(section, lambda rule: _parse_rule(rule, aliases))
    margin = section.float("examples_margin", DEFAULT_MARGIN, minimum=0.0)
    if sum(1 for r in rules if r.examples) == 1:
        raise section.error("only one rule lists examples: a request is routed by the rule "
                            "whose examples it is nearest to, so give at least two rules "
                            "examples (e.g. \"packaged:strong\" and \"packaged:cheap\")",
                            "rules")
    return RouteRules(aliases, tuple(rules), parse_timezone(section, "timezone", None), margin)


class RouteStage:
    """Picks the model a request is sent with and records why and how sure."""

    name = "route"

    def __init__(self, rules: RouteRules, default_timezone: str, prices: PriceTable,
                 analyzer: MessageAnalyzer | None = None) -> None:
        self.rules = rules
        self.timezone = rules.timezone or default_timezone
        examples = [e for r in rules.rules for e in r.examples]
        self.router = ExampleRouter(analyzer.embedder, examples, rules.examples_margin) \
            if examples and analyzer is not None else None
        self.analyzer = analyzer
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
        nearest: list[Nearest | None] = []
        for rule in candidates:
            if rule.when.needs_tokens:
                await facts.settle_prompt_tokens(rule.when.min_tokens, rule.when.max_tokens)
            if not rule.when.holds(facts):
                continue
            why, extra = rule.why, {}
            if rule.examples:
                if not nearest:
                    nearest.append(await self._nearest(ctx))
                found = nearest[0]
                if found is None or found.rule != rule.name:
                    continue
                why = f"{rule.why} (nearest examples, margin {found.margin:.3f})"
                extra = {"margin": round(found.margin, 4), "nearest": list(found.examples)}
            if not ctx.tenant.may_use(rule.model):
                passed_over.append(rule.name)
                continue
            if not rule.mode.acts(ctx.request_id, rule.name):
                ctx.decide(self.name, "shadow", f"rule {rule.name!r} would route to "
                           f"{rule.model!r}: {why}", rule=rule.name, mode=rule.mode.kind,
                           from_model=requested, would_model=rule.model, **extra)
                continue
            self._route(ctx, "route" if rule.model != requested else "keep", why,
                        rule.name, rule.confidence, rule.model, passed_over, extra)
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

    async def _nearest(self, ctx: Context) -> Nearest | None:
        """The example rule the last user message is nearest to, when it leads by the margin."""
        if self.router is None or self.analyzer is None:
            return None
        message = await self.analyzer.analyze(ctx)
        return None if message is None else await self.router.pick(message.vector)

    @staticmethod
    def _route(ctx: Context, action: str, why: str, rule: str | None, confidence: float | None,
               model: str, passed_over: list[str], extra: dict[str, Any] | None = None) -> None:
        data = dict(extra or {})
        if passed_over:
            data["passed_over"] = passed_over
        ctx.decide("route", action, why, rule=rule, confidence=confidence,
                   from_model=ctx.model, to_model=model, **data)
        ctx.set_model(model)


def build(rules: RouteRules, resources: Resources) -> RouteStage:
    """The stage for `rules` (example rules share the process's embedder)."""
    analyzer = analyzer_of(resources) if any(r.examples for r in rules.rules) else None
    stage = RouteStage(rules, resources.config.server.timezone, resources.prices, analyzer)
    if stage.router is not None:
        stage.router.fitted.start()
    return stage
