"""The command line: check, hash-key, demo, and serve with several workers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from proxy.config import hash_key
from proxy.testing import FakeServer

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_accepts_the_shipped_config_and_rules() -> None:
    result = run_cli("check", "--config", "config.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: config.toml")


@pytest.mark.parametrize(("config", "rules", "message"), [
    ("[server]\nport = 'x'\n", "pipeline = []\n", "[server] port: expected an integer"),
    ("", "pipeline = []\n", "at least one [[upstreams]]"),
    ('[[upstreams]]\nname="a"\nbase_url="http://x"\n', 'pipeline = ["nope"]\n',
     "unknown stage 'nope'"),
    ('[[upstreams]]\nname="a"\nbase_url="http://x"\n', "pipeline = [\n", "invalid TOML"),
])
def test_check_refuses_broken_files_with_exit_1(tmp_path: Path, config: str, rules: str,
                                                 message: str) -> None:
    (tmp_path / "c.toml").write_text(config)
    (tmp_path / "r.toml").write_text(rules)
    result = run_cli("check", "--config", str(tmp_path / "c.toml"), "--rules",
                     str(tmp_path / "r.toml"))
    assert result.returncode == 1
    assert message in result.stderr


def test_hash_key_prints_sha256() -> None:
    assert run_cli("hash-key", "sk-x").stdout.strip() == hash_key("sk-x")


def wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    lines = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if re.search(pattern, line):
            return line
        if proc.poll() is not None:
            break
    raise AssertionError(f"{pattern!r} never printed; got {''.join(lines)}")


def wait_healthy(base: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base.removesuffix("/v1") + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("proxy never became healthy")


@pytest.fixture
def process_cleanup() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_demo_prints_a_working_base_url_and_key(tmp_path: Path, process_cleanup: list) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo", "--port", str(port),
                             "--db", str(tmp_path / "demo.db")], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    process_cleanup.append(proc)
    base = wait_for_line(proc, r"base URL", timeout=240).split(":", 1)[1].strip()
    key = wait_for_line(proc, r"API key").split(":", 1)[1].strip()
    with urllib.request.urlopen(base.removesuffix("/v1") + "/ready") as ready:
        assert ready.status == 200  # the banner comes once the models are loaded and fitted
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o", messages=[
        {"role": "user", "content": "what is a good evening routine?"}])
    assert reply.choices[0].message.content


def test_serve_with_two_workers_shares_one_port(tmp_path: Path, process_cleanup: list) -> None:
    with FakeServer() as fake:
        port = free_port()
        (tmp_path / "c.toml").write_text(
            f'[server]\nport = {port}\nworkers = 2\n'
            f'[[upstreams]]\nname = "fake"\nbase_url = "{fake.url}"\n'
            f'[keys.k]\nsha256 = "{hash_key("sk-k")}"\n'
            f'[storage]\nsqlite_path = "{tmp_path / "p.db"}"\n')
        (tmp_path / "r.toml").write_text("pipeline = []\n")
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config",
                                 str(tmp_path / "c.toml"), "--rules", str(tmp_path / "r.toml")],
                                cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env={**os.environ})
        process_cleanup.append(proc)
        base = f"http://127.0.0.1:{port}/v1"
        wait_healthy(base)
        client = openai.OpenAI(base_url=base, api_key="sk-k", max_retries=2)
        for i in range(20):
            client.chat.completions.create(model="gpt-4o",
                                           messages=[{"role": "user", "content": f"q{i}"}])
        assert len(fake.fake.received) == 20
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert len(children) >= 2


def write_example_config(tmp_path: Path, host: str) -> Path:
    """A config that uses the documented example keys, listening on `host`."""
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nhost = "{host}"\n'
                    '[[upstreams]]\nname = "openai"\nbase_url = "http://x/v1"\n'
                    'key_env = "PROXY_TEST_UNSET_KEY"\n'
                    f'[admin]\nkey_sha256 = "{hash_key("sk-admin-change-me")}"\n'
                    f'[keys.demo]\nsha256 = "{hash_key("sk-proxy-demo")}"\n')
    return path


def test_shipped_config_carries_no_usable_key() -> None:
    text = (ROOT / "config.toml").read_text()
    for example in ("sk-admin-change-me", "sk-proxy-demo", "sk-proxy-demo-admin"):
        assert hash_key(example) not in text


@pytest.mark.parametrize("command", ["check", "serve"])
def test_example_keys_are_refused_beyond_loopback(tmp_path: Path, command: str) -> None:
    path = write_example_config(tmp_path, "0.0.0.0")
    result = run_cli(command, "--config", str(path), "--rules", str(ROOT / "rules/config.toml"))
    assert result.returncode == 1
    assert "[admin] key_sha256 is the example key 'sk-admin-change-me'" in result.stderr
    assert "[keys.demo] is the example key 'sk-proxy-demo'" in result.stderr


def test_example_keys_pass_on_loopback_with_a_warning_for_the_missing_upstream_key(
        tmp_path: Path) -> None:
    path = write_example_config(tmp_path, "127.0.0.1")
    env = {k: v for k, v in os.environ.items() if k != "PROXY_TEST_UNSET_KEY"}
    result = subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(path),
                             "--rules", str(ROOT / "rules/config.toml")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "PROXY_TEST_UNSET_KEY is not set" in result.stderr


def test_serve_on_a_busy_port_says_so_and_exits(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(f'[server]\nport = {port}\n'
                          '[[upstreams]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n')
        result = run_cli("serve", "--config", str(config), "--rules",
                         str(ROOT / "rules/config.toml"))
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr and "listening" not in result.stdout
