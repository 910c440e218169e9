"""Proxy API keys -> Tenants. Keys are known only by their sha256."""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from proxy.config import KeyConfig
from proxy.errors import AuthenticationError, PermissionDenied

ADMIN_NAME = "admin"  # the admin key's tenant name and namespace; never a tenant key's name


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

    def require_model(self, model: str) -> None:
        """Refuse (403 `model_not_allowed`) a model outside the key's `allowed_models`."""
        if not self.may_use(model):
            raise PermissionDenied(f"This key may not use the model '{model}'.",
                                   param="model", code="model_not_allowed")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer ...` (or `api-key`, as Azure clients send it)."""
    value = headers.get("Authorization", "")
    if value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return headers.get("api-key") or None


KeyLookup = Callable[[str], Awaitable[KeyConfig | None]]
MISS_SECONDS = 2.0  # an unknown key is not looked up in the key store again this soon


class KeyRing:
    """Resolves presented keys to tenants; keys can be added and revoked at run time.

    With a `lookup` (the key store), a key this process does not know yet is looked
    up there before it is refused, so a key issued on another process works at once;
    misses are remembered for MISS_SECONDS.
    """

    def __init__(self, keys: Iterable[KeyConfig], admin_key_sha256: str | None) -> None:
        self._tenants: dict[str, Tenant] = {k.sha256: Tenant.from_key(k) for k in keys}
        self._admin = (Tenant(ADMIN_NAME, admin_key_sha256, ADMIN_NAME, is_admin=True)
                       if admin_key_sha256 else None)
        self.lookup: KeyLookup | None = None
        self._issued: set[str] = set()
        self._misses: dict[str, float] = {}

    def add(self, key: KeyConfig) -> Tenant:
        """Register (or replace) a key."""
        tenant = Tenant.from_key(key)
        self._tenants[key.sha256] = tenant
        return tenant

    def remove(self, key_hash: str) -> None:
        """Revoke a key."""
        self._tenants.pop(key_hash, None)
        self._issued.discard(key_hash)

    def add_issued(self, key: KeyConfig) -> Tenant:
        """Register a key that came from the key store (replaced by `sync_issued`)."""
        self._issued.add(key.sha256)
        self._misses.pop(key.sha256, None)
        return self.add(key)

    def sync_issued(self, keys: Iterable[KeyConfig]) -> None:
        """Make the store's keys the issued ones: add new and changed, drop revoked."""
        current = {k.sha256: k for k in keys}
        for gone in self._issued - current.keys():
            self.remove(gone)
        for key in current.values():
            tenant = self._tenants.get(key.sha256)
            if tenant is None or tenant.policy != key:
                self.add_issued(key)

    def tenants(self) -> list[Tenant]:
        """All tenant keys (not the admin key)."""
        return list(self._tenants.values())

    def _known(self, digest: str) -> Tenant | None:
        tenant = self._tenants.get(digest)
        if tenant is None and self._admin is not None and digest == self._admin.key_hash:
            tenant = self._admin
        return tenant

    def resolve(self, headers: Mapping[str, str]) -> Tenant:
        """The tenant for a request's key, or AuthenticationError (401)."""
        token, digest = _presented(headers)
        tenant = self._known(digest)
        if tenant is None:
            raise AuthenticationError(f"Incorrect API key provided: {_redact(token)}.")
        return tenant

    async def authenticate(self, headers: Mapping[str, str]) -> Tenant:
        """Like `resolve`, but looks an unknown key up in the key store first."""
        token, digest = _presented(headers)
        tenant = self._known(digest)
        if tenant is None and self.lookup is not None:
            now = time.monotonic()
            if self._misses.get(digest, 0.0) <= now:
                key = await self.lookup(digest)
                if key is not None:
                    return self.add_issued(key)
                if len(self._misses) > 10_000:
                    self._misses.clear()
                self._misses[digest] = now + MISS_SECONDS
        if tenant is None:
            raise AuthenticationError(f"Incorrect API key provided: {_redact(token)}.")
        return tenant


def _presented(headers: Mapping[str, str]) -> tuple[str, str]:
    token = bearer_token(headers)
    if not token:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
        )
    try:
        encoded = token.encode()
    except UnicodeEncodeError:  # header bytes that are not UTF-8 (aiohttp keeps them escaped)
        raise AuthenticationError("Incorrect API key provided: it is not valid UTF-8.") from None
    return token, hashlib.sha256(encoded).hexdigest()


def _redact(token: str) -> str:
    return token[:3] + "*" * 4 + token[-4:] if len(token) > 10 else "****"
