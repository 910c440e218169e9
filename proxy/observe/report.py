"""Plain-text tables of the stats for the terminal (`python -m proxy stats`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = ("group", "calls", "tok in", "cached", "tok out", "cost $", "baseline $", "saved $",
           "saved %", "pattern", "exact", "semantic", "p50 ms", "p95 ms", "errors", "429")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def stats_row(name: str, m: dict[str, Any]) -> list[str]:
    """One table row for one group's metrics."""
    hits = m["hits"]
    return [name, str(m["calls"]), str(m["prompt_tokens"]), str(m["cached_tokens"]),
            str(m["completion_tokens"]),
            f"{m['cost_usd']:.6f}", f"{m['baseline_usd']:.6f}", f"{m['savings_usd']:.6f}",
            f"{m['savings_pct']:.1f}", f"{100 * hits['pattern']['rate']:.1f}%",
            f"{100 * hits['exact_cache']['rate']:.1f}%",
            f"{100 * hits['semantic_cache']['rate']:.1f}%",
            _ms(m["latency_ms"]["p50"]), _ms(m["latency_ms"]["p95"]), str(m["errors"]),
            str(m["rate_limited"])]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned numbers, a rule under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths),
                      *(line(r) for r in rows)])


def render_stats(result: dict[str, Any]) -> str:
    """The stats as the terminal shows them: groups, totals, then the model shares."""
    rows = [stats_row(g["group"], g) for g in result.get("groups", [])]
    rows.append(stats_row("TOTAL", result["totals"]))
    scope = result["key"] or "all keys"
    models = result["totals"]["models"]
    shares = table(("model", "calls", "share", "cost $"),
                   [[m, str(v["calls"]), f"{100 * v['share']:.1f}%", f"{v['cost_usd']:.6f}"]
                    for m, v in models.items()]) if models else "(no upstream answers)"
    return (f"{result['from']} .. {result['to']} ({scope})\n\n{table(COLUMNS, rows)}\n\n"
            f"{shares}\n")
