"""Running the proxy: one worker process, or N sharing a port with SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

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


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, made fit to face the internet.

    A request the client got wrong (a malformed request or header line, a broken body
    framing) is logged as one INFO line naming the error class: never the raw line,
    which may carry an API key, and no traceback, so that nobody can flood the log or
    plant text in it. The proxy's own failures keep their tracebacks.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log as usual, or one short line for a client's malformed request."""
        exc = _exception_of(kwargs.get("exc_info"))
        if isinstance(exc, (HttpProcessingError, web.RequestPayloadError)):
            level, msg = min(level, logging.INFO), f"{msg}: %s"
            args = (*args, type(exc).__name__)
            kwargs.pop("exc_info")
        super().log(level, msg, *args, **kwargs)


def _exception_of(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):  # (type, value, traceback)
        value = exc_info[1]
        return value if isinstance(value, BaseException) else None
    return sys.exc_info()[1] if exc_info else None


# How the proxy's HTTP server runs (`web.run_app` / `web.AppRunner` keyword arguments):
# bodies are decoded by proxy/api/body.py, which answers bad encodings in OpenAI's shape,
# and malformed requests are logged by ServerLog.
SERVER_OPTIONS: dict[str, Any] = {"auto_decompress": False, "logger": ServerLog()}


def setup_logging(request_lines: bool = True) -> None:
    """Log lines with a prefix; request lines (`proxy.requests`) as bare JSON."""
    from proxy.observe.requestlog import configure

    logging.basicConfig(level=os.environ.get("PROXY_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # chatty about CPU features
    if request_lines:
        configure()


# Net container allocations between two young collections (CPython's default: 700).
# Requests free almost everything they allocate by reference counting, but the ledger's
# queued rows pile up until its flush: at the default, a young collection ran every
# ~0.4 s at c=1 and took ~6 ms (measured with gc.callbacks, collecting nothing), the
# bare path's worst latency spike. At 20,000 none ran in 8,000 requests at c=1, and the
# young generation stayed at ~300 objects (issue 13).
YOUNG_COLLECTION_THRESHOLD = 20_000


async def _freeze_startup_objects(app: web.Application) -> None:
    """Keep what start-up made (tokenizer rank tables, config, stores) out of the cyclic
    garbage collector's walks: a full collection over the BPE rank tables takes ~16 ms,
    a latency spike every few seconds under load; after the freeze it walks only what
    requests made since, and seldom (YOUNG_COLLECTION_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


async def _reload_rules_on_sighup(app: web.Application) -> None:
    """SIGHUP re-reads the rule file at once (the watcher would at its next poll); the new
    rules go in force once what they load is ready, as with the watcher."""
    from proxy.pipeline.registry import PIPELINE

    holder = app[PIPELINE]
    reloads: set[asyncio.Task[bool]] = set()  # held until done (the loop keeps weak refs)

    def reload() -> None:
        logging.getLogger("proxy.rules").info("SIGHUP: reloading %s", holder.path)
        task = asyncio.get_running_loop().create_task(holder.reload_when_ready(force=True))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


def run_worker(config: Config, rules: str, reuse_port: bool) -> None:
    """Run one server process until it is signalled to stop (SIGTERM/SIGINT: stop
    accepting, finish what is in flight, flush the ledger; SIGHUP: reload the rules)."""
    from proxy.app import create_app

    setup_logging()  # again: spawned workers start with fresh logging
    use_uvloop()
    app = create_app(config, rules)
    app.on_startup.append(_freeze_startup_objects)  # after the resources are up
    app.on_startup.append(_reload_rules_on_sighup)
    web.run_app(app, host=config.server.host, port=config.server.port, reuse_port=reuse_port,
                access_log=None, print=None, backlog=2048, **SERVER_OPTIONS)


def port_in_use(host: str, port: int) -> bool:
    """True when another process listens on host:port (a probe bind, closed at once;
    SO_REUSEPORT is not set, so another proxy's reuse-port listener counts too)."""
    if port == 0:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


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
    signal.signal(signal.SIGHUP, lambda signum, frame: _signal_all(procs, signal.SIGHUP))
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


def _signal_all(procs: list[Any], signum: int) -> None:
    """Pass a signal on to every started worker."""
    for proc in procs:
        if proc.pid is not None:
            os.kill(proc.pid, signum)


def _raise_interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one shutdown, however many signals
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt
