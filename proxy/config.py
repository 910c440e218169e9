"""Load and validate config.toml and the rule file into typed, frozen objects.

Every problem is reported with the file, the table/rule and the field, e.g.
`rules/config.toml: [route.rules.2 "depth"] max_tokens: expected an integer, got 'ten'`.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

from proxy.embed_backends import BACKENDS

T = TypeVar("T")

BUDGET_PERIODS = ("day", "week", "month", "total")


class ConfigError(ValueError):
    """A config or rule file is invalid; the message names file, rule and problem."""

    def __init__(self, file: str, where: str, problem: str) -> None:
        self.file, self.where, self.problem = file, where, problem
        location = f"{file}: [{where}]" if where else f"{file}:"
        super().__init__(f"{location} {problem}")


def _named(item: Any) -> str:
    """` "hello"` for an entry with a string `name` (errors say which rule), else ''."""
    name = item.get("name") if isinstance(item, Mapping) else None
    return f' "{name}"' if isinstance(name, str) and name else ""


class Section:
    """Typed reads from one TOML table, raising ConfigError that name the field."""

    def __init__(self, table: Any, file: str, where: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(file, where, f"expected a table, got {type(table).__name__}")
        self.table, self.file, self.where = table, file, where

    def error(self, problem: str, key: str | None = None) -> ConfigError:
        """A ConfigError located at this table (and field)."""
        return ConfigError(self.file, self.where, f"{key}: {problem}" if key else problem)

    def _typed(self, key: str, kinds: tuple[type, ...], label: str, default: Any) -> Any:
        value = self.table.get(key, default)
        if value is None or (isinstance(value, kinds) and not (
                isinstance(value, bool) and bool not in kinds)):
            return value
        raise self.error(f"expected {label}, got {value!r}", key)

    @overload
    def str(self, key: builtins.str, default: builtins.str) -> builtins.str: ...
    @overload
    def str(self, key: builtins.str, default: None = None) -> builtins.str | None: ...
    def str(self, key: builtins.str,
            default: builtins.str | None = None) -> builtins.str | None:
        """A string field."""
        value: builtins.str | None = self._typed(key, (builtins.str,), "a string", default)
        return value

    @overload
    def int(self, key: builtins.str, default: builtins.int,
            minimum: builtins.int | None = None) -> builtins.int: ...
    @overload
    def int(self, key: builtins.str, default: None = None,
            minimum: builtins.int | None = None) -> builtins.int | None: ...
    def int(self, key: builtins.str, default: builtins.int | None = None,
            minimum: builtins.int | None = None) -> builtins.int | None:
        """An integer field, optionally bounded below."""
        value: builtins.int | None = self._typed(key, (builtins.int,), "an integer", default)
        if value is not None and minimum is not None and value < minimum:
            raise self.error(f"must be >= {minimum}, got {value}", key)
        return value

    @overload
    def float(self, key: builtins.str, default: builtins.float,
              minimum: builtins.float | None = None) -> builtins.float: ...
    @overload
    def float(self, key: builtins.str, default: None = None,
              minimum: builtins.float | None = None) -> builtins.float | None: ...
    def float(self, key: builtins.str, default: builtins.float | None = None,
              minimum: builtins.float | None = None) -> builtins.float | None:
        """A number field (int or float), optionally bounded below."""
        value: builtins.float | None = self._typed(key, (builtins.int, builtins.float),
                                                   "a number", default)
        if value is not None and minimum is not None and value < minimum:
            raise self.error(f"must be >= {minimum}, got {value}", key)
        return None if value is None else builtins.float(value)

    @overload
    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool: ...
    @overload
    def bool(self, key: builtins.str, default: None = None) -> builtins.bool | None: ...
    def bool(self, key: builtins.str,
             default: builtins.bool | None = None) -> builtins.bool | None:
        """A boolean field."""
        value: builtins.bool | None = self._typed(key, (builtins.bool,), "true or false",
                                                  default)
        return value

    @overload
    def strs(self, key: builtins.str,
             default: tuple[builtins.str, ...]) -> tuple[builtins.str, ...]: ...
    @overload
    def strs(self, key: builtins.str,
             default: None = None) -> tuple[builtins.str, ...] | None: ...
    def strs(self, key: builtins.str, default: tuple[builtins.str, ...] | None = None
             ) -> tuple[builtins.str, ...] | None:
        """A list of strings, returned as a tuple."""
        value = self.table.get(key, default)
        if value is None:
            return None
        if isinstance(value, builtins.str):
            return (value,)
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, builtins.str) for v in value):
            raise self.error(f"expected a list of strings, got {value!r}", key)
        return tuple(value)

    def choice(self, key: builtins.str, choices: tuple[builtins.str, ...],
               default: builtins.str) -> builtins.str:
        """A string field restricted to `choices`."""
        value = self.str(key, default)
        if value not in choices:
            raise self.error(f"expected one of {list(choices)}, got {value!r}", key)
        return value

    def sub(self, key: builtins.str) -> Section:
        """A nested table (empty when absent)."""
        return Section(self.table.get(key, {}), self.file, f"{self.where}.{key}".strip("."))

    def subs(self, key: builtins.str) -> list[Section]:
        """An array of tables (`[[key]]`)."""
        items = self.table.get(key, [])
        if not isinstance(items, list):
            raise self.error("expected an array of tables", key)
        prefix = f"{self.where}.{key}".strip(".")
        return [Section(item, self.file, f"{prefix}.{i}" + _named(item))
                for i, item in enumerate(items)]

    def reject_unknown(self, known: set[builtins.str]) -> None:
        """Refuse keys this table does not define (catches typos)."""
        unknown = sorted(set(self.table) - known)
        if unknown:
            raise self.error(f"unknown field(s) {unknown}; known: {sorted(known)}")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, turning syntax errors into ConfigError."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"invalid TOML: {exc}") from None


def hash_key(key: str) -> str:
    """The sha256 hex digest under which a proxy key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One named upstream: where it is, which models it serves, how patient to be."""

    name: str
    base_url: str
    key_env: str | None = None
    models: tuple[str, ...] = ("*",)
    connect_timeout: float = 5.0
    first_byte_timeout: float = 60.0
    total_timeout: float = 600.0
    max_retries: int = 2
    backoff_seconds: float = 0.25
    prompt_cache_key: bool = True

    def api_key(self) -> str | None:
        """The upstream key, read from the environment (never stored in config)."""
        return os.environ.get(self.key_env) if self.key_env else None


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """A proxy key (stored as sha256) and the tenant policy that comes with it."""

    name: str
    sha256: str
    namespace: str
    budget_usd: float | None = None
    budget_period: str = "month"
    soft_budget_usd: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    allowed_models: tuple[str, ...] | None = None
    log_bodies: bool = False
    defer_batch: bool = False  # may ask `x-proxy-defer: batch`


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where state lives: sqlite (default) or redis, and what to do if redis is down."""

    backend: str = "sqlite"
    sqlite_path: str = "proxy.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "proxy:"
    redis_failure: str = "open"
    redis_timeout: float = 1.0
    ledger_stream_max: int = 100_000  # ledger rows the shared Redis stream keeps
    responses_ttl_days: float = 30.0  # how long stored /v1/responses objects are kept


@dataclass(frozen=True, slots=True)
class BatchesConfig:
    """`[batches]`: how requests deferred with `x-proxy-defer: batch` are submitted."""

    window_seconds: float = 60.0  # each key's queued requests go out as a batch this often
    max_lines: int = 1000  # at most this many requests per batch (more: several batches)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Listening address, process count, request limits, rule file."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 8 * 1024 * 1024
    body_timeout_seconds: float = 30.0
    rules: str = "rules/config.toml"
    rules_poll_seconds: float = 1.0
    timezone: str = "UTC"


@dataclass(frozen=True)
class Config:
    """The whole of config.toml, validated."""

    path: str
    server: ServerConfig
    upstreams: tuple[UpstreamConfig, ...]
    fallbacks: Mapping[str, tuple[tuple[str, str], ...]]
    keys: tuple[KeyConfig, ...]
    admin_key_sha256: str | None
    storage: StorageConfig
    prices: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)
    default_price: tuple[float, float, float] = (2.50, 10.00, 1.25)
    alerts_webhook: str | None = None
    alerts_daily_usd: tuple[float, ...] = ()
    keys_sync_seconds: float = 2.0
    metrics_public: bool = False
    batches: BatchesConfig = field(default_factory=BatchesConfig)
    embedding_backend: str = "auto"

    def upstream(self, name: str) -> UpstreamConfig:
        """The upstream called `name`."""
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)


def _sha256(section: Section, key: str) -> str:
    value = section.str(key)
    if value is None or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise section.error(
            "expected the sha256 hex digest of the key (python -m proxy hash-key KEY)", key
        )
    return str(value)


def _parse_upstream(s: Section) -> UpstreamConfig:
    s.reject_unknown({"name", "base_url", "key_env", "models", "connect_timeout",
                      "first_byte_timeout", "total_timeout", "max_retries", "backoff_seconds",
                      "prompt_cache_key"})
    name, base_url = s.str("name"), s.str("base_url")
    if not name or not base_url:
        raise s.error("needs both name and base_url")
    if not base_url.startswith(("http://", "https://")):
        raise s.error(f"must start with http:// or https://, got {base_url!r}", "base_url")
    return UpstreamConfig(
        name=name,
        base_url=base_url.rstrip("/"),
        key_env=s.str("key_env"),
        models=s.strs("models", ("*",)),
        connect_timeout=s.float("connect_timeout", 5.0, minimum=0.001),
        first_byte_timeout=s.float("first_byte_timeout", 60.0, minimum=0.001),
        total_timeout=s.float("total_timeout", 600.0, minimum=0.001),
        max_retries=s.int("max_retries", 2, minimum=0),
        backoff_seconds=s.float("backoff_seconds", 0.25, minimum=0.0),
        prompt_cache_key=s.bool("prompt_cache_key", True),
    )


def parse_key(name: str, s: Section) -> KeyConfig:
    """Validate one `[keys.NAME]` table (also used by the admin keys API)."""
    s.reject_unknown({"sha256", "namespace", "budget_usd", "budget_period", "soft_budget_usd",
                      "rpm", "tpm", "max_concurrent", "allowed_models", "log_bodies",
                      "defer_batch"})
    return KeyConfig(
        name=name,
        sha256=_sha256(s, "sha256"),
        namespace=s.str("namespace", name),
        budget_usd=s.float("budget_usd", None, minimum=0.0),
        budget_period=s.choice("budget_period", BUDGET_PERIODS, "month"),
        soft_budget_usd=s.float("soft_budget_usd", None, minimum=0.0),
        rpm=s.int("rpm", None, minimum=1),
        tpm=s.int("tpm", None, minimum=1),
        max_concurrent=s.int("max_concurrent", None, minimum=1),
        allowed_models=s.strs("allowed_models", None),
        log_bodies=s.bool("log_bodies", False),
        defer_batch=s.bool("defer_batch", False),
    )


def _default_price(s: Section) -> tuple[float, float, float]:
    """`[pricing]` default_input/output/cached_input: gpt-4o's prices, and by default
    half the input price for cached input (gpt-4o's discount)."""
    input_price = s.float("default_input", 2.50, minimum=0.0)
    cached = s.float("default_cached_input", input_price / 2, minimum=0.0)
    if cached > input_price:
        raise s.error(f"must be <= default_input ({input_price:g}), got {cached:g}",
                      "default_cached_input")
    return input_price, s.float("default_output", 10.00, minimum=0.0), cached


def _parse_fallbacks(s: Section, upstreams: tuple[UpstreamConfig, ...]) -> dict[str, Any]:
    names = {u.name for u in upstreams}
    chains: dict[str, tuple[tuple[str, str], ...]] = {}
    for model in s.table:
        links = []
        for link in s.strs(model, ()):
            upstream, sep, target = link.partition(":")
            if not sep or upstream not in names or not target:
                raise s.error(
                    f"expected 'UPSTREAM:MODEL' with UPSTREAM in {sorted(names)}, got {link!r}",
                    model,
                )
            links.append((upstream, target))
        chains[model] = tuple(links)
    return chains


def parse_config(doc: Mapping[str, Any], path: str = "config.toml") -> Config:
    """Validate a parsed config.toml."""
    root = Section(doc, path, "")
    root.reject_unknown({"server", "upstreams", "fallbacks", "keys", "admin", "storage",
                         "pricing", "alerts", "batches", "embedding"})
    srv = root.sub("server")
    srv.reject_unknown({"host", "port", "workers", "max_body_bytes", "body_timeout_seconds",
                        "rules", "rules_poll_seconds", "timezone"})
    server = ServerConfig(
        host=srv.str("host", "127.0.0.1"),
        port=srv.int("port", 8080, minimum=0),
        workers=srv.int("workers", 1, minimum=1),
        max_body_bytes=srv.int("max_body_bytes", 8 * 1024 * 1024, minimum=1024),
        body_timeout_seconds=srv.float("body_timeout_seconds", 30.0, minimum=0.001),
        rules=srv.str("rules", "rules/config.toml"),
        rules_poll_seconds=srv.float("rules_poll_seconds", 1.0, minimum=0.05),
        timezone=srv.str("timezone", "UTC"),
    )
    upstreams = tuple(_parse_upstream(s) for s in root.subs("upstreams"))
    if not upstreams:
        raise root.error("at least one [[upstreams]] entry is required")
    keys_section = root.sub("keys")
    keys = tuple(parse_key(name, keys_section.sub(name)) for name in keys_section.table)
    hashes = [k.sha256 for k in keys]
    if len(set(hashes)) != len(hashes):
        raise keys_section.error("two keys share the same sha256")
    admin = root.sub("admin")
    admin.reject_unknown({"key_sha256", "keys_sync_seconds", "metrics_public"})
    st = root.sub("storage")
    st.reject_unknown({"backend", "sqlite_path", "redis_url", "redis_failure", "redis_prefix",
                       "redis_timeout", "ledger_stream_max", "responses_ttl_days"})
    storage = StorageConfig(
        backend=st.choice("backend", ("sqlite", "redis"), "sqlite"),
        sqlite_path=st.str("sqlite_path", "proxy.db"),
        redis_url=st.str("redis_url", "redis://127.0.0.1:6379/0"),
        redis_prefix=st.str("redis_prefix", "proxy:"),
        redis_failure=st.choice("redis_failure", ("open", "closed"), "open"),
        redis_timeout=st.float("redis_timeout", 1.0, minimum=0.001),
        ledger_stream_max=st.int("ledger_stream_max", 100_000, minimum=1_000),
        responses_ttl_days=st.float("responses_ttl_days", 30.0, minimum=0.001),
    )
    if not storage.redis_url.startswith(("redis://", "rediss://")):
        raise st.error("must be a redis:// or rediss:// URL", "redis_url")
    pricing = root.sub("pricing")
    pricing.reject_unknown({"default_input", "default_output", "default_cached_input", "models"})
    models = pricing.sub("models")
    prices = {}
    for model in models.table:
        m = models.sub(model)
        m.reject_unknown({"input", "output", "cached_input"})
        given, made = m.float("input", minimum=0.0), m.float("output", minimum=0.0)
        if given is None or made is None:
            raise m.error("needs both input and output (USD per 1M tokens)")
        cached = m.float("cached_input", given, minimum=0.0)
        if cached > given:
            raise m.error(f"must be <= input ({given:g}), got {cached:g}", "cached_input")
        prices[model] = (given, made, cached)
    alerts = root.sub("alerts")
    alerts.reject_unknown({"webhook_url", "daily_spend_usd"})
    embedding = root.sub("embedding")
    embedding.reject_unknown({"backend"})
    return Config(
        path=path,
        server=server,
        upstreams=upstreams,
        fallbacks=_parse_fallbacks(root.sub("fallbacks"), upstreams),
        keys=keys,
        admin_key_sha256=_sha256(admin, "key_sha256") if "key_sha256" in admin.table else None,
        storage=storage,
        prices=prices,
        default_price=_default_price(pricing),
        alerts_webhook=alerts.str("webhook_url"),
        alerts_daily_usd=_thresholds(alerts, "daily_spend_usd"),
        keys_sync_seconds=admin.float("keys_sync_seconds", 2.0, minimum=0.05),
        metrics_public=admin.bool("metrics_public", False),
        batches=_parse_batches(root.sub("batches")),
        embedding_backend=embedding.choice("backend", ("auto", *BACKENDS), "auto"),
    )


def _parse_batches(s: Section) -> BatchesConfig:
    s.reject_unknown({"window_seconds", "max_lines"})
    return BatchesConfig(window_seconds=s.float("window_seconds", 60.0, minimum=0.05),
                         max_lines=s.int("max_lines", 1000, minimum=1))


def _thresholds(s: Section, key: str) -> tuple[float, ...]:
    value = s.table.get(key, [])
    values = [value] if isinstance(value, (int, float)) else value
    if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        raise s.error(f"expected a list of positive USD amounts, got {value!r}", key)
    return tuple(sorted(float(v) for v in values))


def load_config(path: str | Path) -> Config:
    """Read and validate config.toml."""
    return parse_config(read_toml(path), str(path))


@dataclass(frozen=True)
class RulesDoc:
    """The rule file: the pipeline order and each stage's table, not yet built."""

    path: str
    pipeline: tuple[str, ...]
    tables: Mapping[str, Any]

    def section(self, stage: str) -> Section:
        """The table of rules for `stage` (empty when absent)."""
        return Section(self.tables.get(stage, {}), self.path, stage)


def parse_rules_doc(doc: Mapping[str, Any], path: str) -> RulesDoc:
    """Split a parsed rule file into the pipeline order and stage tables."""
    root = Section(doc, path, "")
    order = root.strs("pipeline", ())
    if len(set(order)) != len(order):
        raise root.error("a stage appears twice", "pipeline")
    tables = {k: v for k, v in doc.items() if k != "pipeline"}
    unused = sorted(k for k in tables if k not in order)
    if unused and any(not isinstance(tables[k], Mapping) for k in unused):
        raise root.error(f"top-level keys other than tables: {unused}")
    return RulesDoc(path=path, pipeline=order, tables=tables)


def load_rules_doc(path: str | Path) -> RulesDoc:
    """Read the rule file."""
    return parse_rules_doc(read_toml(path), str(path))
