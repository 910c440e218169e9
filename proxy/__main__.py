"""Command line: serve, demo, check, hash-key."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from proxy.config import ConfigError, hash_key, load_config, load_rules_doc
from proxy.server import serve, use_uvloop, with_overrides

log = logging.getLogger("proxy")
DEMO_KEY = "sk-proxy-demo"
DEMO_ADMIN_KEY = "sk-proxy-demo-admin"
DEFAULT_RULES = str(Path(__file__).resolve().parent.parent / "rules" / "config.toml")


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
    runner = web.AppRunner(create_app(config, rules), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
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
Ctrl-C stops it.""", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await fake_runner.cleanup()


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
    print(f"ok: {config_path} ({len(config.upstreams)} upstreams, {len(config.keys)} keys); "
          f"{doc.path}: {' -> '.join(doc.pipeline) or '(no stages)'}")
    return 0


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("PROXY_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "check":
        return check(args.config, args.rules)
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
    serve(config, rules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
