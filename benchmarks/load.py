"""Load generators: closed-loop saturation (wrk, or a Python fallback) and an open-loop
rate sweep that measures each request from its *scheduled* send time, so a stalled server
cannot hide its queueing delay (no coordinated omission)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np


@dataclass
class Result:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    offered_rps: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        return {**asdict(self), "rps": round(self.rps, 1)}


@dataclass(frozen=True)
class Target:
    url: str
    body: bytes
    content_type: str = "application/json"
    extra_headers: tuple[tuple[str, str], ...] = ()

    def raw_request(self) -> bytes:
        parts = urlsplit(self.url)
        lines = [
            f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}", *(f"{k}: {v}" for k, v in self.extra_headers), "", "",
        ]  # fmt: skip
        return "\r\n".join(lines).encode() + self.body


_WRK_SCRIPT = """
local f = io.open(os.getenv("BENCH_BODY"), "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
%s
function done(summary, latency, requests)
  io.write(string.format('BENCH {"requests": %%d, "seconds": %%f, "errors": %%d, "p50": %%d, "p95": %%d, "p99": %%d}\\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def closed_loop(target: Target, connections: int, seconds: float, cpu: int | None = None) -> Result:
    """As many requests as `connections` keep-alive connections can push for `seconds`."""
    if shutil.which("wrk"):
        return _wrk(target, connections, seconds, cpu)
    return asyncio.run(_python_closed_loop(target, connections, seconds))


def _wrk(target: Target, connections: int, seconds: float, cpu: int | None) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(target.body)
        headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in target.extra_headers)
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_SCRIPT % headers)
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
               "-s", str(script), target.url]  # fmt: skip
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        env = {"BENCH_BODY": str(body), "BENCH_CONTENT_TYPE": target.content_type, "PATH": "/usr/bin:/bin"}
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=seconds + 60, check=True
        ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    data = json.loads(line[6:])
    return Result(data["requests"], data["seconds"], data["errors"],
                  data["p50"] / 1000, data["p95"] / 1000, data["p99"] / 1000)  # fmt: skip


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends a fixed request and reads the answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> _Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _summary(latencies: list[float], errors: int, seconds: float, offered: float | None = None) -> Result:
    lat = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
    return Result(len(latencies), seconds, errors, p50, p95, p99, offered)


async def _python_closed_loop(target: Target, connections: int, seconds: float) -> Result:
    raw = target.raw_request()
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        conn = await _Connection.open(target.url)
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                status = await conn.send(raw)
                latencies.append(time.perf_counter() - t0)
                errors += status >= 400
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return _summary(latencies, errors, time.perf_counter() - started)


async def _open_loop(target: Target, rate: float, seconds: float, max_connections: int) -> Result:
    raw = target.raw_request()
    idle: list[_Connection] = []
    open_count = 0
    latencies: list[float] = []
    errors = 0
    dropped = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        nonlocal open_count, errors
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                open_count += 1
                conn = await _Connection.open(target.url)
            status = await conn.send(raw)
            latencies.append(time.perf_counter() - scheduled)
            errors += status >= 400
            idle.append(conn)
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            latencies.append(time.perf_counter() - scheduled)
            if conn is not None:
                conn.close()
            open_count -= 1

    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if open_count >= max_connections and not idle:
            dropped += 1  # the client itself is saturated: count it as a failure of this rate
            latencies.append(10.0)
            continue
        task = asyncio.create_task(one(scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=30)
    for conn in idle:
        conn.close()
    return _summary(latencies, errors + dropped, seconds, rate)


def open_loop(target: Target, rate: float, seconds: float, max_connections: int = 256) -> Result:
    try:
        import uvloop

        return uvloop.run(_open_loop(target, rate, seconds, max_connections))
    except ImportError:
        return asyncio.run(_open_loop(target, rate, seconds, max_connections))


def sweep(
    target: Target, rates: list[float], seconds: float, p99_targets_ms: list[float]
) -> dict[str, object]:
    """Offered rate vs latency; the highest rate whose p99 (and error-free answers) holds each target."""
    points = []
    for rate in rates:
        result = open_loop(target, rate, seconds)
        points.append(result.as_dict())
        if result.p99_ms > 4 * max(p99_targets_ms) or result.errors > 0.01 * max(result.requests, 1):
            break  # past saturation: higher rates only queue deeper
    best = {}
    for limit in p99_targets_ms:
        ok = [p for p in points if p["p99_ms"] <= limit and p["errors"] == 0]  # type: ignore[operator]
        best[f"max_rps_p99_le_{int(limit)}ms"] = max((p["offered_rps"] for p in ok), default=0)  # type: ignore[type-var]
    return {"points": points, **best}
