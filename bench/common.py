"""Shared bench plumbing: free ports, child servers, closed-loop load, percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("PROXY_SHARED_DATA", ROOT.parent / "shared" / "data"))
OWN_DATA = ROOT / "bench" / "data"
# The repository's own stand-in for each file of the shared workload data.
OWN_STAND_IN = {"paraphrase_dev.jsonl": "heldout_pairs.jsonl",
                "workload_dev.jsonl": "workload_own.jsonl"}


def data_file(name: str) -> Path:
    """A file of the shared workload data, else the repository's own stand-in in
    bench/data (said on stderr, so no run passes one set off as the other)."""
    if (SHARED_DATA / name).exists():
        return SHARED_DATA / name
    own = OWN_DATA / OWN_STAND_IN[name]
    print(f"{SHARED_DATA / name} not found: the shared workload data is absent, using the "
          f"repository's own {own} instead", file=sys.stderr)
    return own


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child process (output discarded) from the repository root."""
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def wait_http(url: str, timeout: float = 120.0,
              proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until `url` answers 2xx (a proxy's `/ready` is 503 until its model is
    loaded); fail at once if `proc` exits first."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except (urllib.error.HTTPError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 2xx")


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    return found


def wait_ok(url: str, timeout: float = 300.0) -> None:
    """Block until `url` answers 200 (e.g. /ready once the embedding model is loaded)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 200")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) in MB of a process plus its descendants (the
    workers of `serve --workers N`)."""
    total = 0.0
    for one in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


def fake_upstream(port: int) -> subprocess.Popen[bytes]:
    """The fake upstream as a child process."""
    return spawn([sys.executable, "-m", "proxy", "fake-upstream", "--port", str(port)])


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) of values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


@dataclass
class LoadResult:
    """Latencies (ms) of a closed-loop run and its throughput."""

    latencies: list[float]
    seconds: float
    errors: int

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float]:
        """p50/p99/mean latency and req/s."""
        return {"p50": pct(self.latencies, 50), "p99": pct(self.latencies, 99),
                "mean": statistics.fmean(self.latencies) if self.latencies else float("nan"),
                "rps": self.rps, "errors": self.errors}


OneRequest = Callable[[aiohttp.ClientSession, int], Awaitable[float]]


def chat_request(base_url: str, key: str, stream: bool, model: str = "gpt-4o") -> OneRequest:
    """A request function: unique prompt, returns latency in ms (time to first byte if
    streaming, else time to the whole body)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = base_url + "/chat/completions"
    tag = uuid.uuid4().hex[:8]

    async def one(session: aiohttp.ClientSession, i: int) -> float:
        body = (b'{"model":"' + model.encode() + b'","messages":[{"role":"user","content":'
                b'"bench ' + f"{tag} {i}".encode() + b' how do I build a habit?"}]'
                + (b',"stream":true}' if stream else b"}"))
        start = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as resp:
            if stream:
                await resp.content.readany()
                first = time.perf_counter()
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(resp.status)
                return (first - start) * 1000
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(resp.status)
        return (time.perf_counter() - start) * 1000

    return one


async def closed_loop(one: OneRequest, total: int, concurrency: int,
                      warmup: int = 100) -> LoadResult:
    """Run `total` requests with `concurrency` workers, each sending back to back."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(warmup):
            await one(session, -i - 1)
        counter = iter(range(total))
        latencies: list[float] = []
        errors = 0

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                try:
                    latencies.append(await one(session, i))
                except Exception:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return LoadResult(latencies, time.perf_counter() - start, errors)
