"""`/v1/proxy/keys`: keys issued, changed and revoked at run time, shared between processes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from limits_support import LIMITS_RULES, PROMPT, admin_send, redis_prefix  # noqa: F401

from proxy.config import hash_key
from proxy.testing import LiveProxy


def sdk(live: LiveProxy, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.base_url, api_key=secret, max_retries=0)


def chat(live: LiveProxy, secret: str) -> Any:
    return sdk(live, secret).chat.completions.create(model="gpt-4o-mini", messages=PROMPT)


def issue(live: LiveProxy, name: str = "team-a", **policy: Any) -> dict[str, Any]:
    status, body = admin_send(live.base_url, "POST", "/proxy/keys", {"name": name, **policy})
    assert status == 201, body
    return body


@pytest.fixture
def limited(tmp_path: Path) -> Any:
    with LiveProxy(tmp_path, rules=LIMITS_RULES, config={"admin": {"keys_sync_seconds": 0.1}}
                   ) as live:
        yield live


@pytest.mark.parametrize(("method", "path"), [("POST", "/proxy/keys"), ("GET", "/proxy/keys"),
                                              ("PATCH", "/proxy/keys/alice"),
                                              ("DELETE", "/proxy/keys/alice")])
def test_tenants_get_403_on_key_management(limited: LiveProxy, method: str, path: str) -> None:
    status, body = admin_send(limited.base_url, method, path, {"name": "x"},
                              key=limited.key("alice"))
    assert (status, body["error"]["code"]) == (403, "permission_denied")


def test_issued_key_works_at_once_and_its_secret_is_shown_only_on_creation(
        limited: LiveProxy, tmp_path: Path) -> None:
    created = issue(limited, rpm=5)
    secret = created["key"]
    assert secret.startswith("sk-proxy-") and created["rpm"] == 5
    assert chat(limited, secret).choices[0].message.content
    _, listing = admin_send(limited.base_url, "GET", "/proxy/keys")
    assert secret not in str(listing)
    assert {k["name"]: k["source"] for k in listing["data"]} == {
        "alice": "config", "bob": "config", "team-a": "api"}
    with sqlite3.connect(tmp_path / "proxy.db") as db:
        stored = db.execute("SELECT sha256, policy FROM proxy_keys").fetchall()
    assert stored[0][0] == hash_key(secret) and secret not in stored[0][1]


def test_patch_changes_the_limits_of_an_issued_key(limited: LiveProxy) -> None:
    secret = issue(limited)["key"]
    status, body = admin_send(limited.base_url, "PATCH", "/proxy/keys/team-a", {"rpm": 1})
    assert (status, body["rpm"]) == (200, 1)
    chat(limited, secret)
    with pytest.raises(openai.RateLimitError):
        chat(limited, secret)


def test_deleted_key_is_refused_with_401(limited: LiveProxy) -> None:
    secret = issue(limited)["key"]
    status, body = admin_send(limited.base_url, "DELETE", "/proxy/keys/team-a")
    assert (status, body["deleted"]) == (200, True)
    with pytest.raises(openai.AuthenticationError):
        chat(limited, secret)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code_or_text"),
    [
        ("POST", "/proxy/keys", {"name": "bad name"}, 400, "'name'"),
        ("POST", "/proxy/keys", {"name": "alice"}, 400, "key_exists"),
        ("POST", "/proxy/keys", {"name": "x", "rpm": "many"}, 400, "rpm"),
        ("POST", "/proxy/keys", {"name": "x", "budget_period": "year"}, 400, "budget_period"),
        ("POST", "/proxy/keys", {"name": "x", "colour": "red"}, 400, "colour"),
        ("PATCH", "/proxy/keys/alice", {"rpm": 3}, 400, "key_in_config"),
        ("DELETE", "/proxy/keys/nobody", None, 404, "not_found"),
    ],
)
def test_bad_key_requests_get_openai_style_errors(limited: LiveProxy, method: str, path: str,
                                                  body: Any, status: int,
                                                  code_or_text: str) -> None:
    got, payload = admin_send(limited.base_url, method, path, body)
    error = payload["error"]
    assert got == status
    assert code_or_text in (error["code"] or "") + error["message"]


def test_issued_key_is_loaded_at_start_up(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=LIMITS_RULES) as live:
        secret = issue(live, rpm=7)["key"]
    with LiveProxy(tmp_path, rules=LIMITS_RULES) as live:
        assert live.resources.keys.resolve({"Authorization": f"Bearer {secret}"}).policy.rpm == 7


def test_key_issued_on_one_replica_works_and_is_revoked_on_another(
        tmp_path: Path, redis_prefix: str) -> None:  # noqa: F811
    config = {"storage": {"backend": "redis", "redis_prefix": redis_prefix},
              "admin": {"keys_sync_seconds": 0.1}}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with LiveProxy(tmp_path / "a", rules=LIMITS_RULES, config=config) as one, \
            LiveProxy(tmp_path / "b", rules=LIMITS_RULES, config=config) as other:
        secret = issue(one)["key"]
        assert chat(other, secret).choices[0].message.content
        admin_send(one.base_url, "DELETE", "/proxy/keys/team-a")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chat(other, secret)
            except openai.AuthenticationError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("revoked key still accepted by the other replica")


def test_the_admin_name_is_never_issued(limited: LiveProxy) -> None:
    status, body = admin_send(limited.base_url, "POST", "/proxy/keys", {"name": "admin"})
    assert (status, body["error"]["code"], body["error"]["param"]) == (400, "name_taken", "name")
    _, listing = admin_send(limited.base_url, "GET", "/proxy/keys")
    assert "admin" not in {k["name"] for k in listing["data"]}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_revoked_name_is_never_issued_again(tmp_path: Path, backend: str,
                                              redis_prefix: str) -> None:  # noqa: F811
    config: dict[str, Any] = {"storage": {"backend": "redis", "redis_prefix": redis_prefix}
                              } if backend == "redis" else {}
    with LiveProxy(tmp_path, rules=LIMITS_RULES, config=config) as live:
        chat(live, issue(live)["key"])
        admin_send(live.base_url, "DELETE", "/proxy/keys/team-a")
        status, body = admin_send(live.base_url, "POST", "/proxy/keys", {"name": "team-a"})
        assert (status, body["error"]["code"]) == (400, "name_taken")
        assert "never issued again" in body["error"]["message"]
        assert admin_send(live.base_url, "GET", "/proxy/keys/team-a")[0] == 404


def test_a_revoked_name_stays_taken_after_a_restart(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, rules=LIMITS_RULES) as live:
        issue(live)
        admin_send(live.base_url, "DELETE", "/proxy/keys/team-a")
    with LiveProxy(tmp_path, rules=LIMITS_RULES) as live:
        status, body = admin_send(live.base_url, "POST", "/proxy/keys", {"name": "team-a"})
    assert (status, body["error"]["code"]) == (400, "name_taken")


def test_a_refused_name_does_not_burn_a_valid_one(limited: LiveProxy) -> None:
    status, _ = admin_send(limited.base_url, "POST", "/proxy/keys", {"name": "x", "rpm": "many"})
    assert status == 400
    assert issue(limited, "x")["name"] == "x"
