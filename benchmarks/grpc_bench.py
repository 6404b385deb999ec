"""The V2 protocol over gRPC beside HTTP, on one gateway process (--grpc-port).

Both protocols are driven by the same load tool, perf_analyzer (-i grpc and -i http), so
the difference is the protocol, not the client: single-row requests at each connection
count, and 256-row requests of raw tensors (gRPC raw_input_contents; HTTP the binary
tensor extension) whose rows/s are compared with ONNX Runtime in-process at batch 256 on
the very rows perf_analyzer sends (one real row repeated: a tree ensemble runs faster on
256 equal rows than on 256 different ones, so the random-row ceiling would flatter us).
Left out where perf_analyzer is not installed (`bash .ci/run` installs it).
"""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import inprocess, perf_analyzer, servers
from benchmarks.progress import progress

BIG_BATCH = 256
BIG_CONCURRENCY = 4


def available() -> bool:
    return perf_analyzer.available()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(repo: Path, model: str, row: np.ndarray, conns: list[int], seconds: float, log: Path) -> dict[str, Any]:
    """Start the gateway with gRPC on, and measure both protocols against it, every
    request made of `row` (one real input row; perf_analyzer repeats it to fill a batch)."""
    port = _free_port()
    argv = [*servers.gateway(repo), "--no-metrics", "--grpc-port", str(port)]
    address = f"127.0.0.1:{port}"
    out: dict[str, Any] = {
        "single_row": {}, "batch256": {},
        "in_process_256": inprocess.rows_per_second_on(
            repo, model, {"input": np.repeat(row, BIG_BATCH, axis=0)}, seconds
        ),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, servers.running(argv, "/readyz", None, log) as url:
        data = Path(tmp) / "input.json"
        content = row.reshape(-1).tolist()
        data.write_text(json.dumps({"data": [{"input": {"content": content, "shape": [len(content)]}}]}))

        def measure(target: str, protocol: str, concurrency: int, batch: int = 1) -> dict[str, Any]:
            return perf_analyzer.measure(
                target, model, concurrency, seconds, servers.LOAD_CPU, protocol, batch, data
            )

        for c in conns:
            out["single_row"][str(c)] = {"grpc": measure(address, "grpc", c), "http": measure(url, "http", c)}
        for protocol, target in (("grpc", address), ("http", url)):
            out["batch256"][protocol] = measure(target, protocol, BIG_CONCURRENCY, BIG_BATCH)
    return out


def summarize(rows: dict[str, Any], scenarios: dict[str, Any]) -> None:
    """Ratios for the scenarios table; perf_analyzer's infer/s counts rows, not requests."""
    in_process_256 = rows["in_process_256"]
    for c, r in rows["single_row"].items():
        scenarios[f"gRPC / HTTP V2 single-row throughput (perf_analyzer, {c} conns)"] = (
            r["grpc"]["rps"] / max(r["http"]["rps"], 1e-9)
        )
        scenarios[f"gRPC p99 / HTTP V2 p99 (single row, {c} conns)"] = r["grpc"]["p99_ms"] / max(
            r["http"]["p99_ms"], 1e-9
        )
    for protocol, r in rows["batch256"].items():
        label = "gRPC raw" if protocol == "grpc" else "HTTP binary"
        scenarios[f"256-row {label} rows/s / in-process ORT at 256 (perf_analyzer)"] = r["rps"] / in_process_256


def markdown(rows: dict[str, Any]) -> list[str]:
    in_process_256 = rows["in_process_256"]
    lines = [
        "## The V2 protocol over gRPC beside HTTP (perf_analyzer both; 100-tree forest)",
        "",
        "| requests | protocol | connections | rows/s | p50 ms | p99 ms | vs in-process at 256 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, r in rows["single_row"].items():
        for protocol in ("grpc", "http"):
            m = r[protocol]
            lines.append(
                f"| single row | {protocol} | {c} | {m['rps']:,.1f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | |"
            )
    for protocol, m in rows["batch256"].items():
        lines.append(
            f"| {BIG_BATCH} rows, raw tensors | {protocol} | {BIG_CONCURRENCY} | {m['rps']:,.1f} "
            f"| {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['rps'] / in_process_256:.0%} |"
        )
    lines.append(f"| {BIG_BATCH} rows, in-process ONNX Runtime, one thread | | | {in_process_256:,.1f} | | | 100% |")
    return lines


def main(quick: bool, out: Path, work: Path) -> dict[str, Any]:
    """`python -m benchmarks grpc`: only this comparison, written to `out`."""
    started, repo, bench, conns, seconds = perf_analyzer.prepare(quick, work)
    progress(f"gRPC and HTTP V2 with perf_analyzer at {conns} connections, then 256-row requests")
    row = bench["forest"].sample.iloc[:1].to_numpy(np.float32)
    rows = run(repo, "forest", row, conns, seconds, work / "servers.log")
    scenarios: dict[str, Any] = {}
    summarize(rows, scenarios)
    results = {
        "started": started.isoformat(timespec="seconds"), "mode": "quick" if quick else "full",
        "host": socket.gethostname(), "pinned": servers.can_pin(), "grpc": rows, "scenarios": scenarios,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    stem = f"grpc-{started.strftime('%Y-%m-%d')}-{socket.gethostname()}" + ("-quick" if quick else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem}.md").write_text("\n".join(markdown(rows)) + "\n")
    progress(f"wrote {out / stem}.json and .md")
    return results
