"""Two gateway apps in one process, driven in alternating rounds through ASGI directly (no
HTTP server, no sockets), to measure what a configuration costs in CPU per request on a
machine that other work shares: both see the same neighbours, and the lowest round of
each is the closest to its own cost (other work only ever adds)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from gateway.app import create_app
from gateway.settings import Settings
from gateway.types import ASGIApp

_HEADERS = [(b"content-type", b"application/json")]


def _scope(path: str, length: int) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [*_HEADERS, (b"content-length", str(length).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
    }  # fmt: skip


async def _lifespan(app: ASGIApp) -> tuple[asyncio.Task[None], asyncio.Queue[dict[str, str]]]:
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def send(message: Any) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, queue.get, send))
    await started.wait()
    return task, queue


async def _burst(app: ASGIApp, path: str, body: bytes, requests: int, concurrency: int) -> None:
    scope = _scope(path, len(body))
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def client(n: int) -> None:
        for _ in range(n):
            await app({**scope, "state": {}}, receive, send)

    await asyncio.gather(*(client(requests // concurrency) for _ in range(concurrency)))
    if set(statuses) != {200}:
        raise RuntimeError(f"statuses {sorted(set(statuses))}")


def compare(
    repo: str, path: str, body: bytes, production_env: dict[str, str], rounds: int, requests: int
) -> dict[str, Any]:
    """CPU µs per request of the bare gateway and the production configuration."""
    access = logging.getLogger("gateway.access")
    bare = create_app(Settings(repo=repo, metrics=False, log_level="warning", poll_seconds=0))
    saved = {k: os.environ.get(k) for k in production_env}
    os.environ.update(production_env)  # read when the production app's tracer is made
    try:
        production = create_app(Settings(repo=repo, log_level="info", log_format="json", poll_seconds=0))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # One access logger for both apps: the bare rounds run with it at warning.
    levels: dict[str, Callable[[], None]] = {
        "bare": lambda: access.setLevel(logging.WARNING),
        "production": lambda: access.setLevel(logging.INFO),
    }

    async def run() -> dict[str, list[float]]:
        spans = [await _lifespan(app) for app in (bare, production)]
        cpu: dict[str, list[float]] = {"bare": [], "production": []}
        for _ in range(rounds):
            for label, app in (("bare", bare), ("production", production)):
                levels[label]()
                before = time.process_time()
                await _burst(app, path, body, requests, 16)
                await asyncio.sleep(0.15)  # the log writer and the span exporter do their share
                cpu[label].append((time.process_time() - before) / requests * 1e6)
        for task, queue in spans:
            await queue.put({"type": "lifespan.shutdown"})
            await task
        return cpu

    cpu = asyncio.run(run())
    lowest = {k: min(v) for k, v in cpu.items()}
    return {
        "rounds_cpu_us_per_request": {k: [round(x, 1) for x in v] for k, v in cpu.items()},
        "lowest_cpu_us_per_request": {k: round(v, 1) for k, v in lowest.items()},
        "ratio": lowest["bare"] / lowest["production"],
    }


def alternate(repo: str, cases: dict[str, tuple[str, bytes]], rounds: int, requests: int) -> dict[str, Any]:
    """CPU µs per request of each (path, body) on one app, in alternating rounds: the V2
    JSON endpoint against the records one on the same model, neighbours alike for both."""
    app = create_app(Settings(repo=repo, metrics=False, log_level="warning", poll_seconds=0))

    async def run() -> dict[str, list[float]]:
        task, queue = await _lifespan(app)
        cpu: dict[str, list[float]] = {label: [] for label in cases}
        for path, body in cases.values():
            await _burst(app, path, body, 256, 16)  # warm: caches, the batcher's lanes
        for _ in range(rounds):
            for label, (path, body) in cases.items():
                before = time.process_time()
                await _burst(app, path, body, requests, 16)
                cpu[label].append((time.process_time() - before) / requests * 1e6)
        await queue.put({"type": "lifespan.shutdown"})
        await task
        return cpu

    cpu = asyncio.run(run())
    return {
        "rounds_cpu_us_per_request": {k: [round(x, 1) for x in v] for k, v in cpu.items()},
        "lowest_cpu_us_per_request": {k: round(min(v), 1) for k, v in cpu.items()},
    }
