"""Command line: serve, demo, check, hash-key, stats, export, build-embedder."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.config import Config, ConfigError, hash_key, load_config, load_rules_doc
from proxy.server import (
    SERVER_OPTIONS,
    port_in_use,
    serve,
    setup_logging,
    use_uvloop,
    with_overrides,
)

log = logging.getLogger("proxy")
DEMO_KEY = "sk-proxy-demo"
DEMO_ADMIN_KEY = "sk-proxy-demo-admin"
DEFAULT_RULES = str(Path(__file__).resolve().parent.parent / "rules" / "config.toml")


async def _until_ready(app: web.Application, timeout: float = 300.0) -> None:
    """Wait until every resource that says whether it is ready (the embedder, the fitted
    models) is, as /ready does, so the banner's example answers at once."""
    from proxy.resources import RESOURCES

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and app[RESOURCES].kept.loading():
        await asyncio.sleep(0.1)


async def _demo(host: str, port: int, rules: str, db_path: str) -> None:
    from proxy.app import create_app
    from proxy.demo import demo_config
    from proxy.upstream.fake import FakeUpstream

    fake = FakeUpstream(ttft=0.05, tokens_per_second=200.0, record=False)
    fake_runner = web.AppRunner(fake.app(), access_log=None)
    await fake_runner.setup()
    fake_site = web.TCPSite(fake_runner, "127.0.0.1", 0)
    await fake_site.start()
    fake_port = fake_runner.addresses[0][1]
    config = demo_config(f"http://127.0.0.1:{fake_port}/v1", port, db_path,
                         hash_key(DEMO_KEY), hash_key(DEMO_ADMIN_KEY))
    app = create_app(config, rules)
    runner = web.AppRunner(app, access_log=None, **SERVER_OPTIONS)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print("loading the embedding model and fitting the classifiers...", flush=True)
    await _until_ready(app)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown}:{runner.addresses[0][1]}/v1"
    print(f"""LLM cost proxy demo (fake upstream, no API key needed)
  base URL : {base}
  API key  : {DEMO_KEY}
  admin key: {DEMO_ADMIN_KEY}

  from openai import OpenAI
  client = OpenAI(base_url="{base}", api_key="{DEMO_KEY}")
  print(client.chat.completions.create(model="gpt-4o",
        messages=[{{"role": "user", "content": "hi"}}]).choices[0].message.content)
  stats    : python -m proxy stats --db {db_path}
Ctrl-C stops it.""", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await fake_runner.cleanup()


def safe_to_start(config: Config) -> bool:
    """Print the config's warnings; print its refusals and return False when there are any."""
    from proxy.safety import refusals, warnings

    for warning in warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    refused = refusals(config)
    for refusal in refused:
        print(f"error: {config.path}: {refusal}", file=sys.stderr)
    return not refused


def check(config_path: str, rules: str | None) -> int:
    """Validate config and rules offline; print precise problems; 0 when valid."""
    from proxy.pipeline.registry import parse_stage_rules

    try:
        config = load_config(config_path)
        doc = load_rules_doc(rules or config.server.rules)
        parse_stage_rules(doc)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not safe_to_start(config):
        return 1
    print(f"ok: {config_path} ({len(config.upstreams)} upstreams, {len(config.keys)} keys); "
          f"{doc.path}: {' -> '.join(doc.pipeline) or '(no stages)'}")
    return 0


def _open_ledger_db(args: argparse.Namespace) -> Any:
    """The ledger database read-only: `--db`, else config.toml's `storage.sqlite_path`."""
    import aiosqlite

    if args.db:
        path = Path(args.db)
        if not path.exists():
            raise ConfigError(args.db, "", "no database there (--db)")
    else:
        path = Path(load_config(args.config).storage.sqlite_path)
        if not path.exists():
            raise ConfigError(args.config, "storage", f"sqlite_path: no database at {path} "
                              "(the demo's is proxy-demo.db: use --db proxy-demo.db)")
    return aiosqlite.connect(path.resolve().as_uri() + "?mode=ro", uri=True)


def _prices(args: argparse.Namespace) -> Any:
    """config.toml's price table; the built-in one when reading a --db without a config."""
    from proxy.pricing import PriceTable

    if args.db and not Path(args.config).exists():
        return PriceTable()
    config = load_config(args.config)
    return PriceTable(config.prices, config.default_price)


async def _stats(args: argparse.Namespace) -> str:
    from proxy.observe.report import render_stats
    from proxy.observe.stats import stats
    from proxy.observe.window import Window

    window = Window.parse(args.from_, args.to, args.key)
    async with _open_ledger_db(args) as db:
        result = await stats(db, window, _prices(args), args.group_by)
    if args.json:
        import orjson

        return orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n"
    return render_stats(result)


async def _export(args: argparse.Namespace) -> int:
    from proxy.observe.export import export_csv, export_openai_jsonl
    from proxy.observe.window import Window

    window = Window.parse(args.from_, args.to, args.key)
    writer = export_openai_jsonl if args.format == "openai-jsonl" else export_csv
    async with _open_ledger_db(args) as db:
        if args.out is None:
            return await writer(db, window, sys.stdout)
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            return await writer(db, window, out)


def _add_window_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.toml")
    parser.add_argument("--db", default=None,
                        help="a ledger database to read (e.g. the demo's proxy-demo.db)")
    parser.add_argument("--from", dest="from_", default=None,
                        help="start: ISO date/datetime or unix seconds (default: 30 days ago)")
    parser.add_argument("--to", default=None, help="end (a bare date includes that day)")
    parser.add_argument("--key", default=None, help="only this key's requests")


def _run_report(args: argparse.Namespace) -> int:
    from proxy.observe.window import WindowError

    try:
        if args.command == "stats":
            sys.stdout.write(asyncio.run(_stats(args)))
            return 0
        count = asyncio.run(_export(args))
    except (ConfigError, WindowError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {count} rows as {args.format}", file=sys.stderr)
    return 0


def build_embedder(force: bool, rules: str | None) -> int:
    """`build-embedder`: write the ONNX embedders into the cache directory, then fit the
    models `rules` use (classifier, pair verifier; none without rules) into the fit cache,
    so that a proxy's first start loads them instead of fitting for a minute."""
    from proxy.embed import default_model_path
    from proxy.embed_export import build
    from proxy.fit_cache import cache_dir

    for path in build(default_model_path(), force):
        print(f"{path} ({path.stat().st_size / 1e6:.0f} MB)")
    if rules is not None:
        asyncio.run(_fit_models(rules))
        print(f"models for {rules} fitted into {cache_dir()}")
    return 0


async def _fit_models(rules: str) -> None:
    """Build the pipeline of `rules` (nothing served, no upstream) until its models are
    fitted: the same code path a serving proxy takes, which stores them in the fit cache."""
    from proxy.demo import demo_config
    from proxy.pipeline.core import Context, Reply
    from proxy.pipeline.registry import PipelineHolder
    from proxy.resources import open_resources

    async def no_upstream(ctx: Context) -> Reply:
        raise RuntimeError("build-embedder sends no request")

    config = demo_config("http://127.0.0.1:9", 0, ":memory:", "0" * 64, "1" * 64)
    async with open_resources(config) as resources:
        PipelineHolder(rules, resources, no_upstream)
        while resources.kept.loading():
            await asyncio.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m proxy`."""
    parser = argparse.ArgumentParser(prog="python -m proxy",
                                     description="OpenAI-compatible LLM cost proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the proxy")
    p_serve.add_argument("--config", default="config.toml")
    p_serve.add_argument("--rules", default=None, help="rule file (default: server.rules)")
    p_serve.add_argument("--host", default=None)
    p_serve.add_argument("--port", type=int, default=None)
    p_serve.add_argument("--workers", type=int, default=None)
    p_serve.add_argument("--upstream", default=None, help="base URL of the default upstream")
    p_demo = sub.add_parser("demo", help="run against a built-in fake upstream (no API key)")
    p_demo.add_argument("--host", default="127.0.0.1")
    p_demo.add_argument("--port", type=int, default=8080)
    p_demo.add_argument("--rules", default=DEFAULT_RULES)
    p_demo.add_argument("--db", default=os.path.join(os.getcwd(), "proxy-demo.db"))
    p_check = sub.add_parser("check", help="validate config and rules")
    p_check.add_argument("--config", default="config.toml")
    p_check.add_argument("--rules", default=None)
    p_fake = sub.add_parser("fake-upstream", help="run only the OpenAI-shaped fake upstream")
    p_fake.add_argument("--port", type=int, default=9090)
    p_fake.add_argument("--ttft", type=float, default=0.0, help="seconds to first token")
    p_fake.add_argument("--tokens-per-second", type=float, default=0.0)
    p_hash = sub.add_parser("hash-key", help="print the sha256 to put in config.toml")
    p_hash.add_argument("key")
    p_stats = sub.add_parser("stats", help="print spend and savings from the ledger")
    _add_window_args(p_stats)
    p_stats.add_argument("--group-by", default=None,
                         choices=("day", "hour", "key", "model", "stage"))
    p_stats.add_argument("--json", action="store_true", help="print the JSON the API returns")
    p_export = sub.add_parser("export", help="export fine-tuning JSONL or the ledger as CSV")
    _add_window_args(p_export)
    p_export.add_argument("--format", required=True, choices=("openai-jsonl", "csv"))
    p_export.add_argument("--out", default=None, help="file to write (default: stdout)")
    p_build = sub.add_parser("build-embedder",
                             help="export the packaged embedding model to ONNX (float32, int8) and "
                                  "fit the rules' models")
    p_build.add_argument("--force", action="store_true", help="rebuild files that exist")
    p_build.add_argument("--embedder-only", action="store_true",
                         help="export the embedders, fit no models")
    p_build.add_argument("--rules", default=DEFAULT_RULES,
                         help="the rule file whose models to fit (default: the shipped one)")
    args = parser.parse_args(argv)
    setup_logging(request_lines=args.command in ("serve", "demo"))
    if args.command in ("stats", "export"):
        return _run_report(args)
    if args.command == "check":
        return check(args.config, args.rules)
    if args.command == "build-embedder":
        return build_embedder(args.force, None if args.embedder_only else args.rules)
    if args.command == "hash-key":
        print(hash_key(args.key))
        return 0
    if args.command == "fake-upstream":
        from proxy.upstream.fake import FakeUpstream

        use_uvloop()
        fake = FakeUpstream(ttft=args.ttft, tokens_per_second=args.tokens_per_second,
                            record=False)
        print(f"fake upstream on http://127.0.0.1:{args.port}/v1", flush=True)
        web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)
        return 0
    if args.command == "demo":
        use_uvloop()
        try:
            asyncio.run(_demo(args.host, args.port, args.rules, args.db))
        except KeyboardInterrupt:
            pass
        return 0
    try:
        config = with_overrides(load_config(args.config), args.host, args.port, args.workers,
                                args.upstream)
        rules = args.rules or config.server.rules
        load_rules_doc(rules)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not safe_to_start(config):
        return 1
    if port_in_use(config.server.host, config.server.port):
        print(f"error: {config.server.host}:{config.server.port} is already in use (another "
              "proxy or program listens there); stop it or choose --port", file=sys.stderr)
        return 1
    serve(config, rules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
