"""The in-memory configuration `python -m proxy demo` runs with."""

from __future__ import annotations

from proxy.config import Config, parse_config


def demo_config(upstream_url: str, port: int, db_path: str, key_sha256: str,
                admin_sha256: str) -> Config:
    """A config with one fake upstream, one demo key and an admin key."""
    return parse_config({
        "server": {"host": "127.0.0.1", "port": port},
        "upstreams": [{"name": "fake", "base_url": upstream_url, "models": ["*"],
                       "max_retries": 1, "backoff_seconds": 0.05}],
        "keys": {"demo": {"sha256": key_sha256, "budget_usd": 5.0, "budget_period": "day",
                          "rpm": 600, "tpm": 2_000_000, "max_concurrent": 64}},
        "admin": {"key_sha256": admin_sha256},
        "storage": {"backend": "sqlite", "sqlite_path": db_path},
    }, "demo")
