"""Maps stage names in rules/config.toml to their modules, and builds pipelines.

Each stage module offers a pure `parse_rules(section: Section) -> Rules` that
validates its table (raising ConfigError naming file, rule and field) and
`build(rules, resources) -> Stage`. A reload builds a whole new pipeline and swaps it in only when
every stage accepted its rules; otherwise the last good pipeline stays.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
from types import ModuleType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.config import ConfigError, RulesDoc, load_rules_doc
from proxy.pipeline.core import Next, Pipeline, Stage
from proxy.pipeline.semantic.standalone import CONTEXT_RULES, parse_context_rules

if TYPE_CHECKING:
    from proxy.resources import Resources

log = logging.getLogger("proxy.rules")
READY_PATIENCE_SECONDS = 600.0  # longest a reload waits for its models before going in force

STAGE_MODULES: dict[str, str] = {
    "patterns": "proxy.pipeline.stages.patterns",
    "exact_cache": "proxy.pipeline.stages.exact_cache",
    "semantic_cache": "proxy.pipeline.stages.semantic_cache",
    "route": "proxy.pipeline.stages.route",
    "tools": "proxy.pipeline.stages.tools",
    "trim": "proxy.pipeline.stages.trim",
    "admission": "proxy.pipeline.stages.admission",
    "budget": "proxy.pipeline.stages.budget",
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


def build_stages(doc: RulesDoc, resources: Resources) -> list[Stage]:
    """Build every stage named in the rule file's `pipeline`, in order, after the shared
    `[context]` rules (the message classifier the caches and routing use)."""
    stages = parse_stage_rules(doc)
    if stages:
        resources.kept.replace(CONTEXT_RULES, parse_context_rules(doc.section("context")))
    return [module.build(rules, resources) for module, rules in stages]


class PipelineHolder:
    """The pipeline in force, rebuilt when the rule file changes (atomically per request)."""

    def __init__(self, path: str, resources: Resources, terminal: Next) -> None:
        self.path = path
        self.resources = resources
        self.terminal = terminal
        self.doc = load_rules_doc(path)
        self.current = Pipeline(build_stages(self.doc, resources), terminal)
        self._mtime = _mtime(path)
        self.last_error: str | None = None

    def reload_if_changed(self) -> bool:
        """Rebuild from the file if its mtime changed; True when a new pipeline is in force."""
        built = self._rebuild_if_changed()
        if built is not None:
            self._swap(*built)
        return built is not None

    async def reload_when_ready(self, patience: float = READY_PATIENCE_SECONDS,
                                force: bool = False) -> bool:
        """As `reload_if_changed` (or at once with `force`, as on SIGHUP), but the new
        pipeline goes in force only once everything it loads is ready (a classifier refitted
        for new `[context]` rules, a pair model for new calibration targets), waiting at most
        `patience` seconds: requests meanwhile are served by the last pipeline, which keeps
        its own fitted models."""
        built = self._rebuild_if_changed(force)
        if built is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while self.resources.kept.loading() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self._swap(*built)
        return True

    def _rebuild_if_changed(self, force: bool = False) -> tuple[RulesDoc, Pipeline] | None:
        mtime = _mtime(self.path)
        if mtime == self._mtime and not force:
            return None
        self._mtime = mtime
        try:
            doc = load_rules_doc(self.path)
            return doc, Pipeline(build_stages(doc, self.resources), self.terminal)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error("rules reload refused, last good rules stay in force: %s", exc)
            return None

    def _swap(self, doc: RulesDoc, pipeline: Pipeline) -> None:
        self.doc, self.current, self.last_error = doc, pipeline, None
        log.info("rules reloaded from %s: %s", self.path, " -> ".join(pipeline.names))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return -1


PIPELINE = web.AppKey("pipeline", PipelineHolder)
