"""`python -m benchmarks production`: what the production configuration costs.

The bare gateway (no metrics, warnings only) against the configuration users run:
Prometheus metrics, a JSON access log line per request and 1 % of requests traced and
exported over OTLP (to a loopback sink on the load CPU). Single-row records to the
100-tree forest, closed loop at 16 and 64 connections, the two configurations interleaved
round by round so that a noisy neighbour hits both alike; then an open-loop sweep of each.
The ratios are taken within the run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import statistics
from pathlib import Path
from typing import Any

import msgspec

from benchmarks import asgi_ab, load, models, report, servers
from benchmarks.progress import progress

TARGET_RATIO = 0.85  # production keeps >= 85 % of the bare gateway's throughput
P99_MS = 10.0


def _configs(repo: Path, sink: servers.TraceSink) -> dict[str, tuple[list[str], dict[str, str]]]:
    traced = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
    }
    return {
        "bare": (servers.gateway(repo, "--no-metrics"), {}),
        "production": (servers.gateway(repo, "--log-level", "info", "--log-format", "json"), traced),
    }


def _server_pid(url: str) -> int:
    """The gateway process behind `url` (taskset execs it, so it is the one with the port)."""
    port = url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"gateway.cli" in argv and port.encode() in argv:
                return int(proc.name)
    raise RuntimeError(f"no gateway process on port {port}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads (the log writer, the span
    exporter): what the requests cost the server, whoever else shares its CPU."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(target: load.Target, connections: int, seconds: float, pid: int) -> dict[str, Any]:
    before = _cpu_seconds(pid)
    result = load.closed_loop(target, connections, seconds, servers.LOAD_CPU).as_dict()
    used = _cpu_seconds(pid) - before
    result["server_cpu_us_per_request"] = round(used / max(result["requests"], 1) * 1e6, 1)
    return result


def run(quick: bool, out: Path, work: Path) -> dict[str, Any]:
    servers.pin_self()
    started = dt.datetime.now(dt.UTC)
    seconds, rounds = (2.0, 1) if quick else (4.0, 5)
    conns = [16, 64]
    rates = [2000.0, 6000] if quick else [2000.0, 4000, 6000, 8000, 10000]
    progress("training and converting the forest")
    repo, bench = models.build(work, ("forest",))
    record = msgspec.json.encode(bench["forest"].sample.iloc[0].to_dict())
    sink = servers.TraceSink()
    log = work / "production-servers.log"
    closed: dict[str, dict[str, list[dict[str, Any]]]] = {}
    sweeps: dict[str, Any] = {}
    try:
        configs = _configs(repo, sink)
        for n in range(rounds):
            for label, (argv, env) in configs.items():
                progress(f"round {n + 1}/{rounds}: {label}, closed loop at {conns} connections")
                with servers.running(argv, "/readyz", env, log) as url:
                    target = load.Target(url + "/v1/models/forest/predict", record)
                    load.closed_loop(target, 8, 1.0, servers.LOAD_CPU)
                    pid = _server_pid(url)
                    for c in conns:
                        result = _measure(target, c, seconds, pid)
                        closed.setdefault(label, {}).setdefault(str(c), []).append(result)
        progress("in-process: both configurations in one process, alternating rounds")
        in_process = asgi_ab.compare(
            str(repo), "/v1/models/forest/predict", record, configs["production"][1],
            rounds=3 if quick else 10, requests=1600 if quick else 3200,
        )  # fmt: skip
        for label, (argv, env) in configs.items():
            progress(f"open-loop sweep: {label}")
            with servers.running(argv, "/readyz", env, log) as url:
                target = load.Target(url + "/v1/models/forest/predict", record)
                load.closed_loop(target, 8, 1.0, servers.LOAD_CPU)
                sweeps[label] = load.sweep(target, rates, 1.5 if quick else 4.0, [P99_MS])
    finally:
        sink.close()
    results = {
        "started": started.isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "host": socket.gethostname(),
        "closed_loop": closed,
        "open_loop": sweeps,
        "in_process": in_process,
        "ratios": {
            c: statistics.median(r["rps"] for r in closed["production"][c])
            / statistics.median(r["rps"] for r in closed["bare"][c])
            for c in map(str, conns)
        },
        # Throughput on a CPU of its own is 1 / CPU per request. Other work on the machine
        # only ever adds to a round's figure (cache, memory bandwidth, a shared core), so the
        # lowest round is the closest to the cost itself.
        "cpu_ratios": {
            c: min(r["server_cpu_us_per_request"] for r in closed["bare"][c])
            / min(r["server_cpu_us_per_request"] for r in closed["production"][c])
            for c in map(str, conns)
        },
    }
    path = report.save(results, markdown(results), out, "production", started, quick)
    progress(f"wrote {path}.{{json,md}}")
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Production configuration vs bare gateway, {results['started']} on {results['host']}",
        "",
        "Single-row records to the 100-tree forest; server pinned to CPU 0, load on CPU 1. "
        "production = metrics + JSON access log per request + 1 % traces exported over OTLP. "
        f"Closed loop: median of {len(next(iter(results['closed_loop']['bare'].values())))} interleaved rounds.",
        "",
        "| configuration | connections | req/s (median) | p50 ms | p99 ms | server CPU µs/request (lowest) | rounds req/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, by_conns in results["closed_loop"].items():
        for c, runs in by_conns.items():
            mid = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
            each = ", ".join(f"{r['rps']:,.0f}" for r in runs)
            cpu = min(r["server_cpu_us_per_request"] for r in runs)
            lines.append(
                f"| {label} | {c} | {mid['rps']:,.0f} | {mid['p50_ms']:.2f} | {mid['p99_ms']:.2f} "
                f"| {cpu:.1f} | {each} |"
            )
    lines += [
        "",
        "| production / bare | req/s | 1 / server CPU per request | goal |",
        "| --- | ---: | ---: | ---: |",
    ]
    for c, ratio in results["ratios"].items():
        lines.append(f"| {c} connections | {ratio:.2f} | {results['cpu_ratios'][c]:.2f} | >= {TARGET_RATIO} |")
    ab = results["in_process"]
    lines += [
        "",
        "In-process, no HTTP server: both configurations in one process, 16 concurrent clients, "
        f"{len(ab['rounds_cpu_us_per_request']['bare'])} alternating rounds; lowest round's CPU per request.",
        "",
        "| configuration | CPU µs/request | rounds |",
        "| --- | ---: | --- |",
    ]
    for label, rounds in ab["rounds_cpu_us_per_request"].items():
        each = ", ".join(f"{x:.0f}" for x in rounds)
        lines.append(f"| {label} | {ab['lowest_cpu_us_per_request'][label]:.1f} | {each} |")
    lines.append(f"| ratio bare / production | {ab['ratio']:.2f} | goal >= {TARGET_RATIO} |")
    lines += ["", f"Open loop: highest offered rate with p99 <= {P99_MS:g} ms and no errors", ""]
    lines += ["| configuration | req/s | points (offered: p99 ms) |", "| --- | ---: | --- |"]
    for label, sweep in results["open_loop"].items():
        points = ", ".join(f"{p['offered_rps']:,.0f}: {p['p99_ms']:.1f}" for p in sweep["points"])
        lines.append(f"| {label} | {sweep['max_rps_p99_le_10ms']:,} | {points} |")
    return "\n".join(lines) + "\n"
