"""Start-up checks that keep a proxy from going live with example secrets.

`python -m proxy check` and `serve` refuse a config whose admin or proxy keys are the
examples printed in the docs and the demo (anyone can read them) when the server listens
beyond loopback, and warn about what would make every request fail (an upstream key
variable that is not set, no proxy keys).
"""

from __future__ import annotations

import ipaddress
import os

from proxy.config import Config, hash_key

EXAMPLE_KEYS = ("sk-admin-change-me", "sk-proxy-demo", "sk-proxy-demo-admin")
_EXAMPLE_HASHES = {hash_key(k): k for k in EXAMPLE_KEYS}


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (the only hosts example keys may serve)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refusals(config: Config) -> list[str]:
    """Why this config must not serve: example keys on a host others can reach."""
    if is_loopback(config.server.host):
        return []
    found = [f"[admin] key_sha256 is the example key {_EXAMPLE_HASHES[config.admin_key_sha256]!r}"
             ] if config.admin_key_sha256 in _EXAMPLE_HASHES else []
    found += [f"[keys.{k.name}] is the example key {_EXAMPLE_HASHES[k.sha256]!r}"
              for k in config.keys if k.sha256 in _EXAMPLE_HASHES]
    return [f"{why}, and server.host {config.server.host!r} is not loopback: make your own "
            "(python -m proxy hash-key \"$(openssl rand -hex 24)\")" for why in found]


def warnings(config: Config) -> list[str]:
    """What would make requests fail although the config is valid."""
    found = [f"[[upstreams]] {u.name!r}: the environment variable {u.key_env} is not set; "
             "upstream calls will be refused" for u in config.upstreams
             if u.key_env and not os.environ.get(u.key_env)]
    if not config.keys:
        found.append("no [keys.NAME]: every request gets 401 until you add one "
                     "(python -m proxy hash-key KEY) or issue one through /v1/proxy/keys")
    return found
