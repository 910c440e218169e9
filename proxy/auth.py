"""Proxy API keys -> Tenants. Keys are known only by their sha256."""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from proxy.config import KeyConfig
from proxy.errors import AuthenticationError


@dataclass(frozen=True, slots=True)
class Tenant:
    """Who is calling: the key's name, cache/thread namespace and policy."""

    name: str
    key_hash: str
    namespace: str
    policy: KeyConfig | None = None
    is_admin: bool = False

    @classmethod
    def from_key(cls, key: KeyConfig) -> Tenant:
        """The tenant a configured key stands for."""
        return cls(name=key.name, key_hash=key.sha256, namespace=key.namespace, policy=key)

    def may_use(self, model: str) -> bool:
        """True when the key's `allowed_models` admit `model` (or it has no such list)."""
        allowed = self.policy.allowed_models if self.policy else None
        return allowed is None or any(fnmatch.fnmatchcase(model, p) for p in allowed)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer ...` (or `api-key`, as Azure clients send it)."""
    value = headers.get("Authorization", "")
    if value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return headers.get("api-key") or None


class KeyRing:
    """Resolves presented keys to tenants; keys can be added and revoked at run time."""

    def __init__(self, keys: Iterable[KeyConfig], admin_key_sha256: str | None) -> None:
        self._tenants: dict[str, Tenant] = {k.sha256: Tenant.from_key(k) for k in keys}
        self._admin = (Tenant("admin", admin_key_sha256, "admin", is_admin=True)
                       if admin_key_sha256 else None)

    def add(self, key: KeyConfig) -> Tenant:
        """Register (or replace) a key."""
        tenant = Tenant.from_key(key)
        self._tenants[key.sha256] = tenant
        return tenant

    def remove(self, key_hash: str) -> None:
        """Revoke a key."""
        self._tenants.pop(key_hash, None)

    def tenants(self) -> list[Tenant]:
        """All tenant keys (not the admin key)."""
        return list(self._tenants.values())

    def resolve(self, headers: Mapping[str, str]) -> Tenant:
        """The tenant for a request's key, or AuthenticationError (401)."""
        token = bearer_token(headers)
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
            )
        digest = hashlib.sha256(token.encode()).hexdigest()
        tenant = self._tenants.get(digest)
        if tenant is None and self._admin is not None and digest == self._admin.key_hash:
            tenant = self._admin
        if tenant is None:
            raise AuthenticationError(f"Incorrect API key provided: {_redact(token)}.")
        return tenant


def _redact(token: str) -> str:
    return token[:3] + "*" * 4 + token[-4:] if len(token) > 10 else "****"
