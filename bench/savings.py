"""Replay the coaching workload through the proxy and report what it saved.

    python bench/savings.py [--rules rules/config.toml] [--limit N] [--mode chat|threads]
                            [--replicas N] [--system-tokens N]

chat mode: each user is one conversation, sent as a chat app does it: a system
prompt, three tool definitions (~500 tokens), the whole growing history, model
gpt-4o. threads mode: the same traffic through the Assistants surface (one thread
per user, one run per message). The fake upstream answers; the ledger prices
what was sent against what the app sent. Reported: share answered by each
stage, the model mix, tokens sent vs as sent, cost vs baseline, and answers
given where they should not have been (pattern replies to non-greetings, cache
hits on context-dependent messages). `--replicas N` (chat mode) runs N proxies over one
store and sends each event to the next one in turn, as a load balancer would: the
caches must then work across processes. The fake upstream's prompt cache runs on the
workload's clock (a prompt stays cached 10 minutes, so not between a user's sessions);
`--system-tokens N` pads the system prompt so prompts are long enough to be cached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import data_file  # noqa: E402  (bench/common.py)

from proxy import tokens  # noqa: E402
from proxy.observe.stats import is_cheap  # noqa: E402
from proxy.pipeline.semantic.standalone import packaged_rows  # noqa: E402
from proxy.pricing import PriceTable  # noqa: E402
from proxy.testing import LiveProxy  # noqa: E402

DEEP_KINDS = {"deep", "pattern_analysis"}
SYSTEM = ("You are Coach, a warm, concise habit and fitness coach inside a mobile app. "
          "Keep answers short, encouraging and specific. Ask one question at a time. "
          "Use the user's goals and history. Never give medical diagnoses.")
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "log_habit_completion",
        "description": "Record that the user completed a habit today, with optional notes, "
                       "duration and perceived effort, so streaks and stats stay accurate.",
        "parameters": {"type": "object", "properties": {
            "habit_id": {"type": "string", "description": "Identifier of the habit"},
            "completed_at": {"type": "string", "description": "ISO 8601 timestamp"},
            "duration_minutes": {"type": "integer", "description": "How long it took"},
            "effort": {"type": "integer", "description": "Perceived effort from 1 to 10"},
            "notes": {"type": "string", "description": "Free-form notes from the user"}},
            "required": ["habit_id"]}}},
    {"type": "function", "function": {
        "name": "get_user_stats",
        "description": "Fetch the user's streaks, completion rates and recent check-ins for "
                       "a time range, to answer questions about progress and patterns.",
        "parameters": {"type": "object", "properties": {
            "range": {"type": "string", "enum": ["week", "month", "quarter", "year"],
                      "description": "Time range of the statistics"},
            "habit_id": {"type": "string", "description": "Only this habit, if given"},
            "include_checkins": {"type": "boolean", "description": "Include check-in notes"}},
            "required": ["range"]}}},
    {"type": "function", "function": {
        "name": "update_goal",
        "description": "Create or change one of the user's goals: target, deadline, "
                       "frequency and reminder time, after the user agreed to it.",
        "parameters": {"type": "object", "properties": {
            "goal_id": {"type": "string", "description": "Existing goal, or empty for new"},
            "title": {"type": "string", "description": "Short name of the goal"},
            "target": {"type": "string", "description": "Measurable target, e.g. 5 km"},
            "deadline": {"type": "string", "description": "ISO 8601 date"},
            "frequency": {"type": "string", "enum": ["daily", "weekly", "monthly"]},
            "reminder_time": {"type": "string", "description": "HH:MM local time"}},
            "required": ["title"]}}},
]
GUIDELINES = (
    "Celebrate the habit the user just completed and name it.",
    "Suggest one concrete next step, with a time of day.",
    "When the user missed a day, normalise it and plan the next attempt.",
    "Tie advice to the goal the user set, and to its deadline.",
    "Prefer small, specific changes over big plans.",
    "Ask about sleep, energy and mood before raising a target.",
    "Never shame the user; keep the tone friendly and direct.",
    "Use the tools to log habits, read stats and change goals when asked.",
)
GREETING_KINDS = {"greeting", "completion"}


def system_prompt(pad_tokens: int) -> str:
    """The app's system prompt, padded with numbered coaching guidelines to at least
    `pad_tokens` more tokens (production prompts often pass the 1,024 tokens from which
    OpenAI caches a prefix)."""
    lines = [SYSTEM]
    while pad_tokens > 0 and tokens.count_text("\n".join(lines[1:])) < pad_tokens:
        lines.append(f"Guideline {len(lines)}: {GUIDELINES[(len(lines) - 1) % len(GUIDELINES)]}")
    return "\n".join(lines)
FREE_STAGES = {"pattern", "exact_cache", "semantic_cache"}


def workload_path() -> Path:
    """PROXY_WORKLOAD when set, else the shared workload (or the repository's own trace)."""
    chosen = os.environ.get("PROXY_WORKLOAD")
    return Path(chosen) if chosen else data_file("workload_dev.jsonl")


def load_events(path: Path, limit: int | None, heldout: bool = False) -> list[dict[str, Any]]:
    """The workload's events in time order; with `heldout`, only the users whose messages
    were not shipped as training examples (proxy/data/examples/context_shared_tune.jsonl)."""
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if heldout:
        tuned = {row["user"] for row in packaged_rows() if "user" in row}
        events = [ev for ev in events if ev["user"] not in tuned]
    return events[:limit] if limit else events


def set_clock(lives: list[LiveProxy], t: float) -> None:
    """Let the fake upstream's prompt cache live in the workload's time, so a cached
    prompt expires between a user's sessions as it would upstream."""
    for live in lives:
        live.fake.prompt_cache.clock = lambda: t


def replay_chat(lives: list[LiveProxy], events: list[dict[str, Any]], model: str,
                system: str = SYSTEM) -> list[tuple[str, str]]:
    """Send every event as the chat app would (event i to proxy i mod N); returns the
    answering stage and model per event.

    When the answer calls a tool, the app runs it and sends the result back (a second
    request for the same event, as a real app does).
    """
    clients = [live.client() for live in lives]
    histories: dict[str, list[dict[str, Any]]] = {}
    stages = []
    for i, ev in enumerate(events):
        set_clock(lives, ev["t"])
        client = clients[i % len(clients)]
        history = histories.setdefault(ev["user"], [])
        history.append({"role": "user", "content": ev["text"]})
        first: tuple[str, str] | None = None
        while True:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "system", "content": system}, *history],
                tools=TOOLS, metadata={"user_id": ev["user"]})
            first = first or (raw.headers.get("x-proxy-stage", "upstream"),
                              raw.headers.get("x-proxy-model", model))
            message = raw.parse().choices[0].message
            history.append(message.model_dump(exclude_none=True, exclude={"refusal"}))
            if not message.tool_calls:
                break
            history.extend({"role": "tool", "tool_call_id": call.id, "content": '{"ok": true}'}
                           for call in message.tool_calls)
        stages.append(first)
    return stages


def replay_threads(lives: list[LiveProxy], events: list[dict[str, Any]], model: str,
                   system: str = SYSTEM) -> list[tuple[str, str]]:
    """One thread per user, one run per message, through the Assistants surface (of the
    first proxy); tool calls are answered with submit_tool_outputs. Returns the stage of
    each run's first turn."""
    live = lives[0]
    client = live.client()
    assistant = client.beta.assistants.create(model=model, instructions=system,
                                              tools=TOOLS)  # type: ignore[arg-type]
    threads: dict[str, str] = {}
    stages = []
    for ev in events:
        set_clock(lives, ev["t"])
        if ev["user"] not in threads:
            threads[ev["user"]] = client.beta.threads.create().id
        thread_id = threads[ev["user"]]
        before = live.run(_last_rowid(live))
        client.beta.threads.messages.create(thread_id, role="user", content=ev["text"])
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread_id, assistant_id=assistant.id, poll_interval_ms=5)
        while run.status == "requires_action" and run.required_action is not None:
            calls = run.required_action.submit_tool_outputs.tool_calls
            run = client.beta.threads.runs.submit_tool_outputs_and_poll(
                run_id=run.id, thread_id=thread_id, poll_interval_ms=5,
                tool_outputs=[{"tool_call_id": c.id, "output": '{"ok": true}'} for c in calls])
        stages.append(live.run(_first_stage_after(live, before)))
    return stages


def replay_responses(lives: list[LiveProxy], events: list[dict[str, Any]], model: str,
                     system: str = SYSTEM) -> list[tuple[str, str]]:
    """One `previous_response_id` chain per user through `/v1/responses` (of the first
    proxy), as an app on the Responses API sends it: only the new message each turn, the
    proxy keeps the conversation; function calls are answered with function_call_output
    items. Returns the stage and model of each event's first request."""
    client = lives[0].client()
    tools = [{"type": "function", **t["function"]} for t in TOOLS]
    last: dict[str, str] = {}
    answers = []
    for ev in events:
        set_clock(lives, ev["t"])
        turn: list[dict[str, Any]] = [{"role": "user", "content": ev["text"]}]
        first: tuple[str, str] | None = None
        while True:
            raw = client.responses.with_raw_response.create(
                model=model, instructions=system, input=turn, tools=tools,
                previous_response_id=last.get(ev["user"]), metadata={"user_id": ev["user"]})
            first = first or (raw.headers.get("x-proxy-stage", "upstream"),
                              raw.headers.get("x-proxy-model", model))
            response = raw.parse()
            last[ev["user"]] = response.id
            calls = [item for item in response.output if item.type == "function_call"]
            if not calls:
                break
            turn = [{"type": "function_call_output", "call_id": c.call_id,
                     "output": '{"ok": true}'} for c in calls]
        answers.append(first)
    return answers


REPLAYS = {"chat": replay_chat, "threads": replay_threads, "responses": replay_responses}
ROW_SOURCE = {"chat": "chat", "threads": "thread", "responses": "responses"}


async def _last_rowid(live: LiveProxy) -> int:
    await live.resources.ledger.flush()
    async with live.resources.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM ledger") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _first_stage_after(live: LiveProxy, rowid: int) -> tuple[str, str]:
    await live.resources.ledger.flush()
    async with live.resources.db.execute(
            "SELECT stage, model FROM ledger WHERE rowid > ? AND source = 'thread' "
            "ORDER BY rowid LIMIT 1", (rowid,)) as cur:
        row = await cur.fetchone()
    return (str(row[0]), str(row[1])) if row else ("none", "none")


def _normal(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def wrong_cache_hits(events: list[dict[str, Any]], stages: list[str]) -> list[str]:
    """Cache answers the data labels wrong: not a labelled repeat, and not an exact repeat
    of an earlier context-free message (the data README's rule)."""
    seen: set[str] = set()
    wrong = []
    for ev, stage in zip(events, stages):
        text = _normal(ev["text"])
        if stage in ("exact_cache", "semantic_cache") and ev["repeat_of"] is None \
                and (ev["context_dependent"] or text not in seen):
            wrong.append(ev["text"])
        if not ev["context_dependent"]:
            seen.add(text)
    return wrong


def summarize(events: list[dict[str, Any]], answers: list[tuple[str, str]],
              rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Shares, costs, wrong answers and deep questions' models of a replay."""
    n = len(answers)
    stages = [stage for stage, _ in answers]
    prices = PriceTable()
    deep = [(st, m) for ev, (st, m) in zip(events, answers) if ev["kind"] in DEEP_KINDS]
    strong = sum(1 for st, m in deep if st == "upstream" and not is_cheap(prices, m))
    wrong_pattern = [ev["text"] for ev, st in zip(events, stages)
                     if st == "pattern" and ev["kind"] not in GREETING_KINDS]
    wrong_cache = [ev["text"] for ev, st in zip(events, stages)
                   if st in ("exact_cache", "semantic_cache") and ev["context_dependent"]]
    unlabelled = wrong_cache_hits(events, stages)
    cost = sum(r["cost_usd"] for r in rows)
    baseline = sum(r["baseline_usd"] for r in rows)
    models = Counter(r["model"] for r in rows if r["stage"] == "upstream")
    return {
        "events": n,
        "seconds": round(seconds, 1),
        "answered_by": {k: f"{v / n:.1%}" for k, v in Counter(stages).most_common()},
        "upstream_models": dict(models),
        "prompt_tokens_sent": sum(r["prompt_tokens"] for r in rows),
        "cached_tokens": sum(r["cached_tokens"] or 0 for r in rows),
        "cost_usd": round(cost, 4),
        "baseline_usd": round(baseline, 4),
        "saved": f"{1 - cost / baseline:.1%}" if baseline else "n/a",
        "pattern_replies_to_non_greetings": len(wrong_pattern),
        "cache_hits_on_context_dependent": len(wrong_cache),
        "cache_hits_right": sum(1 for ev, st in zip(events, stages)
                                if st in ("exact_cache", "semantic_cache")
                                and ev["repeat_of"] is not None),
        "cache_hits_wrong": len(unlabelled),
        "wrong_answers_share_of_events": f"{(len(wrong_pattern) + len(unlabelled)) / n:.2%}",
        "deep_events_answered_fresh_by_strong_model": f"{strong} of {len(deep)}"
                                                      + (f" ({strong / len(deep):.0%})"
                                                         if deep else ""),
        "examples_wrong": (wrong_pattern + wrong_cache + unlabelled)[:10],
    }


def replay(events: list[dict[str, Any]], rules: str, mode: str = "chat",
           model: str = "gpt-4o", replicas: int = 1, system_tokens: int = 0) -> dict[str, Any]:
    """Replay `events` through `replicas` fresh proxies running `rules`; the summary."""
    system = system_prompt(system_tokens)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        lives = [stack.enter_context(LiveProxy(Path(tmp), rules=rules))
                 for _ in range(replicas)]
        start = time.perf_counter()
        stages = REPLAYS[mode](lives, events, model, system)
        seconds = time.perf_counter() - start
        for live in lives[1:]:  # every replica's rows are in the one database
            live.run(live.resources.ledger.flush())
        rows = [r for r in lives[0].ledger_rows() if r["source"] in (ROW_SOURCE[mode], "summary")]
    return {"mode": mode, "model": model, "replicas": replicas,
            "system_tokens": tokens.count_text(system),
            **summarize(events, stages, rows, seconds)}


def main() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # beta.threads
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default=str(ROOT / "rules" / "config.toml"))
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    parser.add_argument("--mode", choices=tuple(REPLAYS), default="chat")
    parser.add_argument("--model", default="gpt-4o",
                        help="model the app asks for: gpt-4o (routing off for explicit models "
                             "by default) or auto (the proxy routes; baseline still gpt-4o)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="proxies over one sqlite store, taking events in turn (chat)")
    parser.add_argument("--system-tokens", type=int, default=0,
                        help="pad the system prompt with this many tokens of guidelines")
    parser.add_argument("--heldout", action="store_true",
                        help="only the users whose messages were not shipped as training "
                             "examples (the held-out half of the shared trace)")
    parser.add_argument("--out", default=None, help="write the JSON summary here")
    args = parser.parse_args()
    if args.replicas > 1 and args.mode != "chat":
        parser.error("--replicas needs --mode chat")
    workload = workload_path()
    events = load_events(workload, args.limit, args.heldout)
    summary = {"workload": str(workload), "heldout_users_only": args.heldout,
               **replay(events, Path(args.rules).read_text(), args.mode, args.model,
                        args.replicas, args.system_tokens)}
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
