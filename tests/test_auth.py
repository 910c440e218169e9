"""Keys resolve to tenants by sha256; unknown keys are refused."""

from __future__ import annotations

import pytest

from proxy.auth import KeyRing
from proxy.config import KeyConfig, hash_key
from proxy.errors import AuthenticationError

RING = KeyRing([KeyConfig("alice", hash_key("sk-a"), "ns", allowed_models=("gpt-4o*",))],
               hash_key("sk-admin"))


@pytest.mark.parametrize(("headers", "name"), [
    ({"Authorization": "Bearer sk-a"}, "alice"),
    ({"Authorization": "bearer sk-a"}, "alice"),
    ({"api-key": "sk-a"}, "alice"),
    ({"Authorization": "Bearer sk-admin"}, "admin"),
])
def test_known_keys_resolve(headers: dict[str, str], name: str) -> None:
    assert RING.resolve(headers).name == name


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-nope-12345"},
                                     {"Authorization": "Basic abc"}])
def test_unknown_or_missing_keys_get_401(headers: dict[str, str]) -> None:
    with pytest.raises(AuthenticationError) as err:
        RING.resolve(headers)
    assert err.value.status == 401 and err.value.code == "invalid_api_key"
    assert "sk-nope-12345" not in err.value.message


def test_allowed_models_are_globs() -> None:
    tenant = RING.resolve({"api-key": "sk-a"})
    assert tenant.may_use("gpt-4o-mini") and not tenant.may_use("gpt-5")
