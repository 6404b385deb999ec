"""perf_analyzer, Triton's own load tool, against the gateway's V2 endpoint.

Users who hold a model to a p99 target measure it with perf_analyzer; its figures sit
beside wrk's (same server, same model, same connection counts) so the two can be compared.
It also reads the server-side breakdown (queue, compute) from our statistics extension.

The binary ships in the tritonclient==2.51.0 wheel, installed by .ci/run into the clients'
own virtual environment (.venv-clients); where that is missing, the row is left out.
`python -m benchmarks perf [--quick]` runs only this comparison.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from benchmarks import load, models, servers
from benchmarks.progress import progress

CLIENTS = Path(os.environ.get("GATEWAY_CLIENTS_VENV", servers.ROOT / ".venv-clients"))
BINARY = CLIENTS / "bin" / "perf_analyzer"


def available() -> bool:
    return BINARY.exists()


def _env() -> dict[str, str]:
    """The binary links libcudart even on CPU: the pip package's copy is on the path."""
    libs = [str(p) for p in (CLIENTS / "lib").glob("python3*/site-packages/nvidia/cuda_runtime/lib")]
    return {**os.environ, "LD_LIBRARY_PATH": ":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")])}


def measure(
    url: str, model: str, concurrency: int, seconds: float, cpu: int | None = None,
    protocol: str = "http", batch: int = 1, input_data: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One concurrency level: perf_analyzer's client-side throughput and percentiles, and
    the server-side averages it computed from the statistics extension. `protocol` is
    perf_analyzer's -i (http, or grpc with `url` as host:port); `batch` rows per request,
    each `input_data`'s batch-1 request (a JSON file) where given, else its random data."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "perf.csv"
        cmd = [
            str(BINARY), "-m", model, "-i", protocol, "-u", url.removeprefix("http://"), "-b", str(batch),
            "--concurrency-range", f"{concurrency}:{concurrency}",
            # Three windows of a third of the time each; any spread counts as stable: the
            # figures are the windows' own, and a busy machine must not make the run fail
            # (-s is a percentage; 100 still failed on a loaded 2-core machine, 1000 holds).
            "--measurement-interval", str(max(200, int(seconds * 1000 / 3))), "-s", "1000",
            "--max-trials", "3", "-f", str(report),
        ]  # fmt: skip
        if input_data is not None:
            cmd += ["--input-data", str(input_data)]
        if cpu is not None and servers.can_pin():
            cmd = ["taskset", "-c", str(cpu), *cmd]
        done = subprocess.run(
            cmd, check=False, capture_output=True, text=True, env=_env(), timeout=seconds * 4 + 60
        )
        if done.returncode != 0:
            raise RuntimeError(f"perf_analyzer exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        (row,) = list(csv.DictReader(report.open()))
    us = lambda key: float(row[key])  # noqa: E731 -- perf_analyzer writes microseconds
    return {
        "rps": round(float(row["Inferences/Second"]), 1),
        "p50_ms": us("p50 latency") / 1000, "p95_ms": us("p95 latency") / 1000, "p99_ms": us("p99 latency") / 1000,
        "server_queue_us": us("Server Queue"), "server_compute_input_us": us("Server Compute Input"),
        "server_compute_infer_us": us("Server Compute Infer"),
        "server_compute_output_us": us("Server Compute Output"),
    }  # fmt: skip


def compare(url: str, model: str, v2_json: bytes, conns: list[int], seconds: float) -> dict[str, Any]:
    """perf_analyzer and wrk on the same server and model, at each connection count."""
    target = load.Target(f"{url}/v2/models/{model}/infer", v2_json)
    load.closed_loop(target, 8, 1.0, servers.LOAD_CPU)  # warm the server and its caches
    out: dict[str, Any] = {}
    for c in conns:
        out[str(c)] = {
            "perf_analyzer": measure(url, model, c, seconds, servers.LOAD_CPU),
            "wrk": load.closed_loop(target, c, seconds, servers.LOAD_CPU).as_dict(),
        }
    return out


def markdown(rows: dict[str, Any]) -> list[str]:
    lines = [
        "## perf_analyzer beside wrk: gateway V2, single row, 100-tree forest",
        "",
        "| connections | perf_analyzer req/s | p50 ms | p99 ms | wrk req/s | p50 ms | p99 ms "
        "| server queue µs | server compute µs |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, r in rows.items():
        pa, wrk = r["perf_analyzer"], r["wrk"]
        compute = pa["server_compute_input_us"] + pa["server_compute_infer_us"] + pa["server_compute_output_us"]
        lines.append(
            f"| {c} | {pa['rps']:,.1f} | {pa['p50_ms']:.2f} | {pa['p99_ms']:.2f} | {wrk['rps']:,.1f} "
            f"| {wrk['p50_ms']:.2f} | {wrk['p99_ms']:.2f} | {pa['server_queue_us']:.0f} | {compute:.0f} |"
        )
    return lines


def v2_single_row(bench: dict[str, models.BenchModel], model: str = "forest") -> bytes:
    row = bench[model].sample.iloc[:1].to_numpy(np.float32)
    return msgspec.json.encode(
        {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row.ravel().tolist()}]}
    )


def prepare(quick: bool, work: Path) -> tuple[dt.datetime, Path, dict[str, Any], list[int], float]:
    """What a standalone perf_analyzer comparison starts from: its start time, the forest
    converted into a repository, and its connections and seconds."""
    if not available():
        raise SystemExit(f"no perf_analyzer at {BINARY}: `bash .ci/run` installs it")
    started = dt.datetime.now(dt.UTC)
    servers.pin_self()
    work.mkdir(exist_ok=True)
    progress("training and converting the forest")
    repo, bench = models.build(work, ("forest",))
    conns, seconds = ([16], 2.0) if quick else ([1, 16, 64], 6.0)
    return started, repo, bench, conns, seconds


def run(quick: bool, out: Path, work: Path) -> dict[str, Any]:
    """`python -m benchmarks perf`: only this comparison, written to `out`."""
    started, repo, bench, conns, seconds = prepare(quick, work)
    progress(f"perf_analyzer and wrk at {conns} connections")
    with servers.running([*servers.gateway(repo), "--no-metrics"], "/readyz", None, work / "servers.log") as url:
        rows = compare(url, "forest", v2_single_row(bench), conns, seconds)
    results = {
        "started": started.isoformat(timespec="seconds"), "mode": "quick" if quick else "full",
        "host": socket.gethostname(), "pinned": servers.can_pin(), "wrk": shutil.which("wrk") is not None,
        "perf_analyzer": rows,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    stem = f"perf-analyzer-{started.strftime('%Y-%m-%d')}-{socket.gethostname()}" + ("-quick" if quick else "")
    (out / f"{stem}.json").write_text(msgspec.json.format(msgspec.json.encode(results)).decode() + "\n")
    (out / f"{stem}.md").write_text("\n".join(markdown(rows)) + "\n")
    progress(f"wrote {out / stem}.json and .md")
    return results
