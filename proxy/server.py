"""Running the proxy: one worker process, or N sharing a port with SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from typing import Any

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


def setup_logging(request_lines: bool = True) -> None:
    """Log lines with a prefix; request lines (`proxy.requests`) as bare JSON."""
    from proxy.observe.requestlog import configure

    logging.basicConfig(level=os.environ.get("PROXY_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # chatty about CPU features
    if request_lines:
        configure()


async def _freeze_startup_objects(app: web.Application) -> None:
    """Keep what start-up made (tokenizer rank tables, config, stores) out of the cyclic
    garbage collector's walks: a full collection over the BPE rank tables takes ~16 ms,
    a latency spike every few seconds under load; after the freeze it walks only what
    requests made since."""
    gc.collect()
    gc.freeze()


def run_worker(config: Config, rules: str, reuse_port: bool) -> None:
    """Run one server process until it is signalled to stop."""
    from proxy.app import create_app

    setup_logging()  # again: spawned workers start with fresh logging
    use_uvloop()
    app = create_app(config, rules)
    app.on_startup.append(_freeze_startup_objects)  # after the services are up
    web.run_app(app, host=config.server.host, port=config.server.port, reuse_port=reuse_port,
                access_log=None, print=None, backlog=2048)


def serve(config: Config, rules: str) -> None:
    """Run `server.workers` processes sharing one port (SO_REUSEPORT).

    With several workers, Prometheus metrics go to a shared PROMETHEUS_MULTIPROC_DIR
    (a fresh temporary directory, removed at exit, unless one is set already).
    """
    workers = config.server.workers
    print(f"proxy listening on http://{config.server.host}:{config.server.port}/v1 "
          f"({workers} worker{'s' if workers > 1 else ''})", flush=True)
    if workers == 1:
        run_worker(config, rules, reuse_port=False)
        return
    from proxy.observe.metrics import MULTIPROC_ENV

    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="proxy-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    signal.signal(signal.SIGTERM, _raise_interrupt)
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=run_worker, args=(config, rules, True), daemon=False)
             for _ in range(workers)]
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
            proc.join()
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one shutdown, however many signals
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt
