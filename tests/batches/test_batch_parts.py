"""Grouping batch lines by model and combining the upstream batches of one proxy batch
(proxy/batches/lines.py, view.py; passthrough_usage.total_bill)."""

from __future__ import annotations

import orjson
import pytest

from proxy.batches.lines import group_by_model, parse_input, with_body
from proxy.batches.view import combined_status, combined_upstream
from proxy.pipeline.core import Usage
from proxy.pipeline.passthrough.usage import Bill, total_bill


def test_groups_keep_first_seen_model_order_and_input_order() -> None:
    groups = group_by_model([("b", b"1"), ("a", b"2"), ("b", b"3")])
    assert list(groups.items()) == [("b", [b"1", b"3"]), ("a", [b"2"])]


def test_a_rewritten_line_keeps_its_other_fields() -> None:
    raw = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}'
    (line,) = parse_input(raw, "/v1/chat/completions")
    assert orjson.loads(with_body(line, {"model": "m"})) == {
        "custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m"}}


@pytest.mark.parametrize(("statuses", "combined"), [
    (["completed", "in_progress"], "in_progress"),
    (["finalizing", "validating", "completed"], "validating"),
    (["cancelling", "validating"], "cancelling"),
    (["failed", "completed"], "completed"),
    (["failed", "expired"], "expired"),
    (["cancelled", "cancelled"], "cancelled"),
])
def test_a_combined_batch_is_as_far_as_its_slowest_part(statuses: list[str],
                                                        combined: str) -> None:
    assert combined_status(statuses) == combined


def part(status: str, completed: int, tokens: int, output: str | None) -> dict[str, object]:
    """An upstream batch object."""
    return {"id": f"b{completed}", "status": status, "output_file_id": output,
            "error_file_id": None,
            "request_counts": {"total": completed, "completed": completed, "failed": 0},
            "usage": {"input_tokens": tokens, "output_tokens": 1, "total_tokens": tokens + 1}}


def test_parts_combine_counts_usage_and_files() -> None:
    both = combined_upstream([part("completed", 2, 10, None), part("completed", 3, 5, "f")])
    assert both["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert both["usage"]["input_tokens"] == 15 and both["usage"]["total_tokens"] == 17
    assert both["output_file_id"] == "f" and both["error_file_id"] is None


def test_one_part_is_shown_as_it_is() -> None:
    one = part("in_progress", 1, 1, None)
    assert combined_upstream([one]) is one


def test_bills_of_parts_add_up() -> None:
    bills = [Bill("a", Usage(10, 2), 0.5, batch=True), None,
             Bill("b", Usage(5, 1, 3), 0.25, batch=True)]
    total = total_bill(bills)
    assert total is not None and total.cost_usd == pytest.approx(0.75)
    assert (total.usage.prompt_tokens, total.usage.completion_tokens,
            total.usage.cached_tokens) == (15, 3, 3)
    assert total_bill([None]) is None and total_bill([bills[0]]) is bills[0]
