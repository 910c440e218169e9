"""`GET /openapi.json`: the served paths, described from the router, with no key needed."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from proxy.testing import LiveProxy


def test_openapi_lists_every_served_path_with_a_summary(tmp_path: Path) -> None:
    with LiveProxy(tmp_path) as live:
        with urllib.request.urlopen(live.base_url.removesuffix("/v1") + "/openapi.json") as resp:
            spec = json.loads(resp.read())
        assert live.app is not None
        routes = {(r.method.lower(), r.resource.canonical) for r in live.app.router.routes()
                  if r.resource is not None and r.method not in ("HEAD", "*")
                  and "{tail" not in r.resource.canonical}
    assert spec["openapi"] == "3.1.0"
    paths = spec["paths"]
    for method, path in [("post", "/v1/chat/completions"), ("post", "/v1/responses"),
                         ("get", "/v1/responses/{response_id}"),
                         ("delete", "/v1/responses/{response_id}"), ("get", "/v1/models"),
                         ("post", "/v1/threads/{thread_id}/runs"), ("get", "/v1/proxy/stats"),
                         ("get", "/ready")]:
        assert method in paths[path], (method, path)
    listed = {(m, p) for p, ops in paths.items() for m in ops}
    assert listed - {("post", "/v1/embeddings")} == routes  # nothing left out
    assert all(op["summary"] for ops in paths.values() for op in ops.values())
    [param] = paths["/v1/responses/{response_id}"]["get"]["parameters"]
    assert (param["name"], param["in"], param["required"]) == ("response_id", "path", True)
    assert "x-passthrough" in spec



def test_openapi_describes_the_bodies_of_the_main_endpoints(tmp_path: Path) -> None:
    with LiveProxy(tmp_path) as live:
        with urllib.request.urlopen(live.base_url.removesuffix("/v1") + "/openapi.json") as resp:
            paths = json.loads(resp.read())["paths"]
    required = {path: paths[path]["post"]["requestBody"]["content"]["application/json"]
                ["schema"]["required"]
                for path in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")}
    assert required == {"/v1/chat/completions": ["model", "messages"],
                        "/v1/responses": ["model"], "/v1/embeddings": ["model", "input"]}
