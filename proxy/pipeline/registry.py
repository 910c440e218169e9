"""Maps stage names in rules/config.toml to their modules, and builds pipelines.

Each stage module offers a pure `parse_rules(section: Section) -> Rules` that
validates its table (raising ConfigError naming file, rule and field) and
`build(rules, services) -> Stage`. A reload builds a whole new pipeline and swaps it in only when
every stage accepted its rules; otherwise the last good pipeline stays.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from types import ModuleType
from typing import TYPE_CHECKING, Any

from proxy.config import ConfigError, RulesDoc, load_rules_doc
from proxy.pipeline.core import Next, Pipeline, Stage
from proxy.pipeline.standalone import parse_context_rules

if TYPE_CHECKING:
    from proxy.services import Services

log = logging.getLogger("proxy.rules")

STAGE_MODULES: dict[str, str] = {
    "patterns": "proxy.pipeline.patterns",
    "exact_cache": "proxy.pipeline.exact_cache",
    "semantic_cache": "proxy.pipeline.semantic_cache",
    "route": "proxy.pipeline.route",
    "tools": "proxy.pipeline.tools",
    "trim": "proxy.pipeline.trim",
    "admission": "proxy.pipeline.admission",
    "budget": "proxy.pipeline.budget",
}


def available_stages() -> list[str]:
    """Stage names whose modules are installed."""
    return [name for name, module in STAGE_MODULES.items()
            if importlib.util.find_spec(module) is not None]


def parse_stage_rules(doc: RulesDoc) -> list[tuple[ModuleType, Any]]:
    """Validate every stage's rules without building anything (`proxy check`)."""
    known = available_stages()
    parsed = []
    for name in doc.pipeline:
        if name not in known:
            raise ConfigError(doc.path, "pipeline", f"unknown stage {name!r}; known: {known}")
        module = importlib.import_module(STAGE_MODULES[name])
        parsed.append((module, module.parse_rules(doc.section(name))))
    parse_context_rules(doc.section("context"))
    return parsed


def build_stages(doc: RulesDoc, services: Services) -> list[Stage]:
    """Build every stage named in the rule file's `pipeline`, in order, after the shared
    `[context]` rules (the message classifier the caches and routing use)."""
    stages = parse_stage_rules(doc)
    if stages:
        services.state["context_rules"] = parse_context_rules(doc.section("context"))
    return [module.build(rules, services) for module, rules in stages]


class PipelineHolder:
    """The pipeline in force, rebuilt when the rule file changes (atomically per request)."""

    def __init__(self, path: str, services: Services, terminal: Next) -> None:
        self.path = path
        self.services = services
        self.terminal = terminal
        self.doc = load_rules_doc(path)
        self.current = Pipeline(build_stages(self.doc, services), terminal)
        self._mtime = _mtime(path)
        self.last_error: str | None = None

    def reload_if_changed(self) -> bool:
        """Rebuild from the file if its mtime changed; True when a new pipeline is in force."""
        if _mtime(self.path) == self._mtime:
            return False
        return self.reload()

    def reload(self) -> bool:
        """Rebuild from the file now (SIGHUP); True when a new pipeline is in force."""
        self._mtime = _mtime(self.path)
        try:
            doc = load_rules_doc(self.path)
            pipeline = Pipeline(build_stages(doc, self.services), self.terminal)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error("rules reload refused, last good rules stay in force: %s", exc)
            return False
        self.doc, self.current, self.last_error = doc, pipeline, None
        log.info("rules reloaded from %s: %s", self.path, " -> ".join(pipeline.names))
        return True


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return -1
