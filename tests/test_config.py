"""config.toml validation: every problem names file, table and field."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, parse_config, parse_rules_doc

UP = [{"name": "a", "base_url": "http://x/v1"}]
SHA = "a" * 64


@pytest.mark.parametrize(("doc", "message"), [
    ({}, "at least one [[upstreams]]"),
    ({"upstreams": [{"name": "a"}]}, "[upstreams.0 \"a\"] needs both name and base_url"),
    ({"upstreams": [{"name": "a", "base_url": "ftp://x"}]}, "base_url: must start with http"),
    ({"upstreams": UP, "server": {"port": "80"}}, "[server] port: expected an integer"),
    ({"upstreams": UP, "server": {"prot": 80}}, "unknown field(s) ['prot']"),
    ({"upstreams": UP, "keys": {"k": {"sha256": "short"}}}, "[keys.k] sha256: expected the sha256"),
    ({"upstreams": UP, "keys": {"k": {"sha256": SHA, "rpm": 0}}}, "[keys.k] rpm: must be >= 1"),
    ({"upstreams": UP, "keys": {"k": {"sha256": SHA, "budget_period": "year"}}},
     "budget_period: expected one of"),
    ({"upstreams": UP, "keys": {"k": {"sha256": SHA}, "j": {"sha256": SHA}}}, "share the same"),
    ({"upstreams": UP, "fallbacks": {"gpt-4o": ["b:gpt-4o-mini"]}}, "expected 'UPSTREAM:MODEL'"),
    ({"upstreams": UP, "storage": {"backend": "mongo"}}, "[storage] backend: expected one of"),
    ({"upstreams": UP, "storage": {"redis_url": "unix:///run/redis.sock"}},
     "[storage] redis_url: must be a redis:// or rediss:// URL"),
    ({"upstreams": UP, "storage": {"ledger_stream_max": 10}},
     "[storage] ledger_stream_max: must be >= 1000"),
    ({"upstreams": UP, "pricing": {"models": {"m": {"input": 1}}}}, "needs both input and output"),
    ({"upstreams": UP, "pricing": {"models": {"m": {"input": 1, "output": 2,
                                                    "cached_input": 1.5}}}},
     "[pricing.models.m] cached_input: must be <= input (1), got 1.5"),
    ({"upstreams": UP, "embedding": {"backend": "tensorflow"}},
     "[embedding] backend: expected one of"),
    ({"upstreams": UP, "pricing": {"default_cached_input": 3}},
     "[pricing] default_cached_input: must be <= default_input (2.5), got 3"),
])
def test_invalid_config_is_refused_with_location(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "cfg.toml")
    assert str(err.value).startswith("cfg.toml:")
    assert message in str(err.value)


def test_valid_config_parses_with_defaults() -> None:
    config = parse_config({"upstreams": UP, "keys": {"k": {"sha256": SHA, "rpm": 5}},
                           "fallbacks": {"gpt-4o": ["a:gpt-4o-mini"]}})
    assert config.keys[0].namespace == "k" and config.keys[0].rpm == 5
    assert config.fallbacks["gpt-4o"] == (("a", "gpt-4o-mini"),)
    assert config.server.port == 8080 and config.storage.backend == "sqlite"


def test_the_embedding_backend_defaults_to_auto() -> None:
    assert parse_config({"upstreams": UP}).embedding_backend == "auto"
    doc = {"upstreams": UP, "embedding": {"backend": "numpy"}}
    assert parse_config(doc).embedding_backend == "numpy"


def test_pricing_models_take_a_cached_input_rate_defaulting_to_input() -> None:
    config = parse_config({"upstreams": UP, "pricing": {"models": {
        "house": {"input": 1, "output": 2, "cached_input": 0.25},
        "plain": {"input": 1, "output": 2}}}})
    assert config.prices == {"house": (1.0, 2.0, 0.25), "plain": (1.0, 2.0, 1.0)}


@pytest.mark.parametrize(("pricing", "default"), [
    ({}, (2.50, 10.00, 1.25)),
    ({"default_input": 1.0, "default_output": 3.0}, (1.0, 3.0, 0.5)),
    ({"default_input": 1.0, "default_output": 3.0, "default_cached_input": 1.0}, (1.0, 3.0, 1.0)),
])
def test_the_default_price_has_a_cached_rate(pricing: dict[str, float],
                                             default: tuple[float, float, float]) -> None:
    assert parse_config({"upstreams": UP, "pricing": pricing}).default_price == default


def test_upstreams_may_turn_off_the_prompt_cache_key() -> None:
    config = parse_config({"upstreams": [{**UP[0], "prompt_cache_key": False}]})
    assert config.upstreams[0].prompt_cache_key is False
    assert parse_config({"upstreams": UP}).upstreams[0].prompt_cache_key is True


def test_rules_doc_refuses_duplicate_stage() -> None:
    with pytest.raises(ConfigError, match="appears twice"):
        parse_rules_doc({"pipeline": ["route", "route"]}, "rules.toml")
