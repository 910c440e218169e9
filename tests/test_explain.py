"""POST /v1/proxy/explain: the trace without an upstream call."""

from __future__ import annotations

from proxy.testing import LiveProxy


def test_explain_reports_trace_and_never_calls_upstream(live: LiveProxy) -> None:
    client = live.client()
    report = client.post("/proxy/explain", cast_to=object, body={
        "model": "gpt-4o", "messages": [{"role": "user", "content": "plan my week"}]})
    assert report["answered_by"] == "upstream"
    assert report["model"] == "gpt-4o"
    assert report["prompt_tokens"]["as_sent"] > 0
    assert report["trace"][-1]["action"] == "would_forward"
    assert len(live.fake.received) == 0
    assert live.ledger_rows() == []
