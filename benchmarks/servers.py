"""Start and stop the servers under test, each pinned to its own CPU where the machine
allows (server on CPU 0, the load generator on CPU 1)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
LOAD_CPU = 1


# Decided once, at import, before pin_self() narrows this process to the load CPU.
_PINNABLE = (
    hasattr(os, "sched_getaffinity")
    and len(os.sched_getaffinity(0)) >= 2
    and shutil.which("taskset") is not None
)


def can_pin() -> bool:
    return _PINNABLE


def pin_self() -> None:
    """The orchestrator and its Python load generator run on the load CPU."""
    if can_pin():
        os.sched_setaffinity(0, {LOAD_CPU})


def rss_mb(pid: int) -> float:
    """A process's resident memory, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(
    argv: list[str], health: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[str]:
    """Run `argv` (with {port} filled in) pinned to the server CPU; yield its base URL."""
    port = _port()
    cmd = [a.replace("{port}", str(port)) for a in argv]
    if can_pin():
        cmd = ["taskset", "-c", str(SERVER_CPU), *cmd]
    out = log.open("ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {process.returncode}")
            try:
                if httpx.get(url + health, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} not healthy in 120 s")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if log:
            out.close()  # type: ignore[union-attr]


def gateway(repo: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "serve", "--repo", str(repo), "--host", "127.0.0.1",
            "--port", "{port}", "--log-level", "warning", "--poll-seconds", "0", *flags]  # fmt: skip


def uvicorn_app(app: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "{port}",
            "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"]  # fmt: skip


def granian_app(
    app: str, env_settings: dict[str, object] | None = None
) -> tuple[list[str], dict[str, str]] | None:
    """The same ASGI app on granian (a Rust HTTP server), only where it is installed: it was
    tried as the issue asks, it is not a dependency. With `env_settings`, `app` is the
    gateway's worker factory, which reads its settings from the environment."""
    if importlib.util.find_spec("granian") is None:
        return None
    argv = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
            "--loop", "uvloop", "--http", "1", "--no-ws", "--log-level", "warning"]  # fmt: skip
    if env_settings is None:
        return [*argv, app], {}
    from gateway.cli.serve import SETTINGS_ENV
    from gateway.settings import build_settings

    settings = msgspec.json.encode(build_settings(env_settings)).decode()
    return [*argv, "--factory", app], {SETTINGS_ENV: settings}


class TraceSink:
    """A loopback OTLP/HTTP endpoint that accepts and discards spans, so that tracing
    costs what it costs in production: spans are built, sampled and exported."""

    def __init__(self) -> None:
        self.port = _port()
        code = (
            "import http.server as h\n"
            "class S(h.BaseHTTPRequestHandler):\n"
            "    def do_POST(self):\n"
            "        self.rfile.read(int(self.headers.get('content-length', 0)))\n"
            "        self.send_response(200); self.send_header('content-length', '0'); self.end_headers()\n"
            "    def log_message(self, *a): pass\n"
            f"h.ThreadingHTTPServer(('127.0.0.1', {self.port}), S).serve_forever()\n"
        )
        # The collector is somebody else's machine in production: it runs on the load CPU,
        # so the server's CPU pays for building and exporting spans, not for receiving them.
        pin = ["taskset", "-c", str(LOAD_CPU)] if can_pin() else []
        self.process = subprocess.Popen([*pin, sys.executable, "-c", code])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.process.kill()
        self.process.wait(5)
