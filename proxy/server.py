"""Running the proxy: one worker process, or N sharing a port with SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing

from aiohttp import web

from proxy.config import Config


def use_uvloop() -> None:
    """Run asyncio on uvloop when it is installed (faster sockets and timers)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def with_overrides(config: Config, host: str | None, port: int | None,
                   workers: int | None, upstream: str | None) -> Config:
    """Apply command-line overrides (`--upstream` replaces the first upstream's URL)."""
    server = dataclasses.replace(
        config.server,
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        workers=workers or config.server.workers,
    )
    upstreams = config.upstreams
    if upstream:
        first = dataclasses.replace(upstreams[0], base_url=upstream.rstrip("/"))
        upstreams = (first, *upstreams[1:])
    return dataclasses.replace(config, server=server, upstreams=upstreams)


def run_worker(config: Config, rules: str, reuse_port: bool) -> None:
    """Run one server process until it is signalled to stop."""
    from proxy.app import create_app

    use_uvloop()
    app = create_app(config, rules)
    web.run_app(app, host=config.server.host, port=config.server.port, reuse_port=reuse_port,
                access_log=None, print=None, backlog=2048)


def serve(config: Config, rules: str) -> None:
    """Run `server.workers` processes sharing one port (SO_REUSEPORT)."""
    workers = config.server.workers
    print(f"proxy listening on http://{config.server.host}:{config.server.port}/v1 "
          f"({workers} worker{'s' if workers > 1 else ''})", flush=True)
    if workers == 1:
        run_worker(config, rules, reuse_port=False)
        return
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=run_worker, args=(config, rules, True), daemon=False)
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
            proc.join()
