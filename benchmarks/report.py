"""Benchmark results as JSON, a markdown table and PNG plots."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any


def save(
    results: dict[str, Any], text: str, out: Path, name: str, started: dt.datetime, quick: bool
) -> Path:
    """`<name>-<date>-<host>[-quick].json` (the figures) and `.md` (`text`) under `out`; the
    path without its suffix."""
    stem = f"{name}-{started.strftime('%Y-%m-%d')}-{socket.gethostname()}" + ("-quick" if quick else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text)
    return out / stem


def write(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(markdown(results))
    paths += _plots(results, out, stem)
    return paths


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"# Benchmark {results['started']} on {env['host']}",
        "",
        f"{env['cpu']}; {env['cores']} cores; server pinned to CPU 0 and load generator to CPU 1: "
        f"{env['pinned']}; load generator: {env['load_generator']}; mode: {results['mode']}.",
        "",
        "## Single-row requests, 100-tree forest (closed loop)",
        "",
        "| server | connections | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for server, runs in results["single_row"].items():
        for c, r in runs.items():
            lines.append(f"| {server} | {c} | {_fmt(r['rps'])} | {_fmt(r['p50_ms'])} | {_fmt(r['p95_ms'])} "
                         f"| {_fmt(r['p99_ms'])} | {r['errors']} |")  # fmt: skip
    lines += ["", "## Open loop: highest offered rate holding the p99 target", "",
              "| server | p99 ≤ 10 ms | p99 ≤ 50 ms |", "| --- | ---: | ---: |"]  # fmt: skip
    for server, sweep in results["open_loop"].items():
        lines.append(
            f"| {server} | {_fmt(sweep['max_rps_p99_le_10ms'])} | {_fmt(sweep['max_rps_p99_le_50ms'])} |"
        )
    lines += ["", "## Batching and big requests", "", "| scenario | value |", "| --- | ---: |"]
    for name, value in results["scenarios"].items():
        lines.append(f"| {name} | {_fmt(value)} |")
    lines += ["", "## Compute ceiling: ONNX Runtime in-process, rows/s on one thread", "",
              "| model | " + " | ".join(str(b) for b in results["batch_sizes"]) + " |",
              "| --- |" + " ---: |" * len(results["batch_sizes"])]  # fmt: skip
    for model, by_batch in results["in_process"].items():
        lines.append(
            f"| {model} | " + " | ".join(_fmt(by_batch[str(b)]) for b in results["batch_sizes"]) + " |"
        )
    if "perf_analyzer" in results:
        from benchmarks.perf_analyzer import markdown as perf_analyzer_rows

        lines += ["", *perf_analyzer_rows(results["perf_analyzer"])]
    if "grpc" in results:
        from benchmarks.grpc_bench import markdown as grpc_rows

        lines += ["", *grpc_rows(results["grpc"])]
    lines += ["", "## Targets (ratios from this run)", "", "| target | measured | goal | met |",
              "| --- | ---: | ---: | :---: |"]  # fmt: skip
    for t in results["targets"]:
        lines.append(f"| {t['name']} | {_fmt(t['value'])} | {t['goal']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _plots(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    # One colour per server in both panels; more servers than tab10 has colours share none.
    servers = list(dict.fromkeys([*results["single_row"], *results["open_loop"]]))
    palette = plt.get_cmap("tab10" if len(servers) <= 10 else "tab20")
    colour = {server: palette(i) for i, server in enumerate(servers)}
    for server, runs in results["single_row"].items():
        xs = [r["rps"] for r in runs.values()]
        ys = [r["p99_ms"] for r in runs.values()]
        left.plot(xs, ys, marker="o", label=server, color=colour[server])
    left.set(xscale="log", yscale="log", xlabel="throughput (req/s)", ylabel="p99 latency (ms)",
             title="Closed loop: throughput vs p99 (single row, forest)")  # fmt: skip
    left.legend(fontsize=8)
    for server, sweep in results["open_loop"].items():
        points = sweep["points"]
        rates = [p["offered_rps"] for p in points]
        right.plot(rates, [p["p99_ms"] for p in points], marker="o", label=server, color=colour[server])
        right.plot(rates, [p["p50_ms"] for p in points], ls=":", alpha=0.6, color=colour[server])
    right.axhline(10, color="grey", lw=0.8)
    right.axhline(50, color="grey", lw=0.8, ls="--")
    right.set(xscale="log", yscale="log", xlabel="offered rate (req/s)", ylabel="latency (ms)",
              title="Open loop: p99 (solid) and p50 (dotted) vs offered rate")  # fmt: skip
    right.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{stem}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
