"""Exports: fine-tuning data in OpenAI's chat format from the body log, and the ledger as CSV.

`openai-jsonl` writes one `{"messages": [...]}` object per logged request: the
messages the client sent followed by the assistant's answer (the format OpenAI's
fine-tuning accepts; `developer` messages become `system`). Only requests whose
key had `log_bodies` on are there. Rows are streamed in batches, never loaded whole.

CSV text cells that a spreadsheet would read as a formula (starting with = + - @,
tab or carriage return; clients choose models, request ids and cause errors) get a
leading single quote, as OWASP's CSV-injection guidance recommends.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from typing import Any, TextIO

import aiosqlite
import orjson

from proxy.observe.window import Window

_BATCH = 1000
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


async def iter_rows(db: aiosqlite.Connection, table: str, window: Window,
                    columns: str = "*") -> AsyncIterator[tuple[list[str], aiosqlite.Row]]:
    """(column names, row) for a table's rows in the window, oldest first."""
    where, args = window.where()
    async with db.execute(f"SELECT {columns} FROM {table} WHERE {where} ORDER BY ts",
                          args) as cur:
        names = [d[0] for d in cur.description]
        while batch := await cur.fetchmany(_BATCH):
            for row in batch:
                yield names, row


def training_example(messages_json: str, answer: str) -> dict[str, Any]:
    """One fine-tuning example: the request's messages plus the assistant's answer."""
    messages = [{**m, "role": "system"} if m.get("role") == "developer" else m
                for m in orjson.loads(messages_json)]
    return {"messages": [*messages, {"role": "assistant", "content": answer}]}


async def export_openai_jsonl(db: aiosqlite.Connection, window: Window, out: TextIO) -> int:
    """Write the body log as fine-tuning JSONL; returns the number of examples."""
    count = 0
    async for _, (messages, response) in iter_rows(db, "bodies", window,
                                                   "messages, response"):
        out.write(orjson.dumps(training_example(messages, response)).decode() + "\n")
        count += 1
    return count


def spreadsheet_safe(cell: Any) -> Any:
    """The cell, with a leading `'` if it is text a spreadsheet would run as a formula."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS):
        return "'" + cell
    return cell


async def export_csv(db: aiosqlite.Connection, window: Window, out: TextIO) -> int:
    """Write the ledger rows as CSV with a header line; returns the number of rows."""
    writer = csv.writer(out)
    count = 0
    async for names, row in iter_rows(db, "ledger", window):
        if count == 0:
            writer.writerow(names)
        writer.writerow([spreadsheet_safe(cell) for cell in row])
        count += 1
    return count
