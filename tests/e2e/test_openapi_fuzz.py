"""Schemathesis against `/openapi.json`: generated requests to every described operation,
with a tenant key and with the admin key, never get a 5xx."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from proxy.testing import LiveProxy

# Stages that need no embedding model (share = "all": no standalone-message analysis),
# so the proxy is ready at once and the fuzzing fits in about a minute.
RULES = ('pipeline = ["admission", "patterns", "exact_cache", "trim", "budget"]\n'
         '[exact_cache]\nshare = "all"\n')


@pytest.fixture(scope="module")
def live_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProxy]:
    """One proxy (and fake upstream) for every generated case of this module."""
    with LiveProxy(tmp_path_factory.mktemp("fuzz"), rules=RULES) as live:
        yield live


@pytest.fixture(scope="module")
def api_schema(live_proxy: LiveProxy) -> schemathesis.BaseSchema:
    """The proxy's own description of itself, pointed at the live proxy."""
    root = live_proxy.base_url.removesuffix("/v1")
    with urllib.request.urlopen(root + "/openapi.json") as resp:
        doc = json.loads(resp.read())
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=root)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_5xx(case: schemathesis.Case, live_proxy: LiveProxy) -> None:
    for who in ("alice", "admin"):
        response = case.call(headers={"Authorization": f"Bearer {live_proxy.key(who)}"},
                             timeout=30)
        assert response.status_code < 500, (who, case.method, case.formatted_path,
                                            case.body, response.text[:300])
