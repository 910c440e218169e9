"""Offline token counting."""

from __future__ import annotations

import pytest

from proxy import tokens


@pytest.mark.parametrize(("model", "encoding"), [
    ("gpt-4o", "o200k_base"), ("gpt-4o-mini-2024-07-18", "o200k_base"), ("gpt-5", "o200k_base"),
    ("gpt-4-turbo", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"), ("mystery", "o200k_base"),
])
def test_models_map_to_their_encoding(model: str, encoding: str) -> None:
    assert tokens.encoding_for_model(model).name == encoding


@pytest.mark.parametrize(("text", "expected"), [
    ("hello world", 2), ("", 0), ("tiktoken is great!", 6),
])
def test_o200k_counts_match_known_values(text: str, expected: int) -> None:
    assert tokens.count_text(text, "gpt-4o") == expected


def test_cl100k_round_trips_text() -> None:
    enc = tokens.encoding("cl100k_base")
    assert enc.decode(enc.encode_ordinary("Grüße, 世界! 123")) == "Grüße, 世界! 123"


def test_message_counting_adds_framing_and_tools() -> None:
    messages = [{"role": "user", "content": "hello world"}]
    plain = tokens.count_messages(messages)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    assert plain == 3 + 3 + tokens.count_text("user\nhello world")
    assert tokens.count_messages(messages, tools=[tool]) > plain + 5


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        tokens.encoding("p50k_base")


def test_the_message_memo_holds_at_most_its_size_and_counts_as_the_tokenizer_does() -> None:
    memo = tokens.MessageTokenMemo(3)
    long_texts = [f"{i} " + "a long pasted document " * 5_000 for i in range(5)]
    counts = [memo.count("o200k_base", "user", text) for text in long_texts]
    assert len(memo) == 3
    assert counts == [3 + tokens.count_text(f"user\n{text}") for text in long_texts]
    assert memo.count("o200k_base", "user", long_texts[-1]) == counts[-1]  # from the memo
    assert len(memo) == 3


def test_message_tokens_of_a_plain_message_match_count_messages() -> None:
    message = {"role": "user", "content": "How many tokens is this sentence?"}
    assert tokens.message_tokens(message) == tokens.count_messages([message]) - 3
    assert tokens.message_tokens(message) == tokens.message_tokens(dict(message))
