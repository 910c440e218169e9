"""The `when` conditions shared by pattern and route rules, against request facts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from proxy.config import Section
from proxy.pipeline.conditions import parse_conditions
from proxy.pipeline.facts import RequestFacts
from proxy.testing import make_context

NOON_UTC = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def holds(when: dict[str, Any], body: dict[str, Any], headers: dict[str, str] | None = None,
          prompt_tokens: int = 0) -> bool:
    conditions = parse_conditions(Section({"when": when}, "rules.toml", "test.rules.0"))
    facts = RequestFacts(make_context({"model": "gpt-4o", **body}, headers), "UTC",
                         lambda: NOON_UTC)
    facts.prompt_tokens = prompt_tokens
    return conditions.holds(facts)


HISTORY = [user("hi"), {"role": "assistant", "content": "Hey! Want a plan?"}, user("ok")]


@pytest.mark.parametrize(
    ("when", "messages", "expected"),
    [
        ({"max_words": 2}, [user("hey there")], True),
        ({"max_words": 2}, [user("hey there coach")], False),
        ({"min_words": 3}, [user("hey there coach")], True),
        ({"max_words": 1}, [user("👍")], True),
        ({"max_user_messages": 1}, [user("hi")], True),
        ({"max_user_messages": 1}, HISTORY, False),
        ({"min_messages": 3}, HISTORY, True),
        ({"max_messages": 2}, HISTORY, False),
        ({"keywords": ["goal"]}, [user("Help me set my goals")], True),
        ({"exclude_keywords": ["not"]}, [user("not done")], False),
        ({"regex": "^done$"}, [user("Done!!")], True),
        ({"question": False}, [user("done?")], False),
        ({"after_question": True}, HISTORY, True),
        ({"after_question": False}, HISTORY, False),
        ({"images": True}, [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}], True),
        ({"images": True}, [user("hi")], False),
    ],
)
def test_message_conditions(when: dict[str, Any], messages: list[dict[str, Any]],
                            expected: bool) -> None:
    assert holds(when, {"messages": messages}) is expected


@pytest.mark.parametrize(
    ("when", "extra", "expected"),
    [
        ({"tools": True}, {"tools": [{"type": "function", "function": {"name": "f"}}]}, True),
        ({"tools": True}, {}, False),
        ({"response_format": ["json_schema"]},
         {"response_format": {"type": "json_schema", "json_schema": {}}}, True),
        ({"response_format": ["text"]}, {}, True),
        ({"optimize_for": ["cost"]}, {"metadata": {"optimize_for": "cost"}}, True),
        ({"optimize_for": ["cost"]}, {"metadata": {"optimize_for": "nonsense"}}, False),
    ],
)
def test_request_conditions(when: dict[str, Any], extra: dict[str, Any], expected: bool) -> None:
    assert holds(when, {"messages": [user("hi")], **extra}) is expected


def test_optimize_for_header_wins_over_metadata() -> None:
    body = {"messages": [user("hi")], "metadata": {"optimize_for": "cost"}}
    assert holds({"optimize_for": ["quality"]}, body, {"x-proxy-optimize-for": "Quality"})


@pytest.mark.parametrize(("when", "tokens", "expected"),
                         [({"min_tokens": 100}, 150, True), ({"max_tokens": 100}, 150, False)])
def test_prompt_token_conditions(when: dict[str, Any], tokens: int, expected: bool) -> None:
    assert holds(when, {"messages": [user("hi")]}, prompt_tokens=tokens) is expected


@pytest.mark.parametrize(
    ("hours", "timezone", "expected"),
    [
        ("9-17", None, True),                      # 12:00 UTC
        ("17-24", None, False),
        ("17-24", "Asia/Tokyo", True),             # 21:00 in Tokyo
        ("21-5", "America/Los_Angeles", True),     # 04:00 in LA, a span across midnight
        ("9-17", "Not/AZone", True),               # unknown zone: the default (UTC)
    ],
)
def test_hours_in_request_or_default_time_zone(hours: str, timezone: str | None,
                                               expected: bool) -> None:
    metadata = {"timezone": timezone} if timezone else {}
    assert holds({"hours": hours}, {"messages": [user("hi")], "metadata": metadata}) is expected


@pytest.mark.parametrize(
    ("test", "metadata", "expected"),
    [
        ({"streak": ">= 7"}, {"streak": "7"}, True),
        ({"streak": ">= 7"}, {"streak": "12"}, True),      # numeric, not string, comparison
        ({"streak": ">= 7"}, {"streak": "3"}, False),
        ({"streak": ">= 7"}, {"streak": "lots"}, False),
        ({"streak": ">= 7"}, {}, False),
        ({"plan": "pro"}, {"plan": "pro"}, True),
        ({"plan": "!= pro"}, {"plan": "free"}, True),
        ({"level": 1}, {"level": "1.0"}, True),
    ],
)
def test_metadata_comparisons(test: dict[str, Any], metadata: dict[str, str],
                              expected: bool) -> None:
    body = {"messages": [user("hi")], "metadata": metadata}
    assert holds({"metadata": test}, body) is expected
