"""The GPU benchmark: in-process CUDA rows/s against the gateway on CUDA, for the heavy
models (a 4x1024 MLP and a 1,000-tree boosted model) at batch sizes 1 to 4096.

    uv sync --frozen --extra gpu --extra convert --extra dev && uv run --no-sync python -m benchmarks gpu

Needs onnxruntime-gpu and an NVIDIA GPU; records the device, driver and versions.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from benchmarks import inprocess, load, models, servers
from gateway.artifacts.repository import Repository
from gateway.runtime import CUDA, OrtRuntime

BATCHES = [1, 4, 16, 64, 256, 1024, 4096]


def _device() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname()}
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
        info["gpu"] = out
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
    info["providers"] = onnxruntime.get_available_providers()
    return info


def _in_process(repo: Path, name: str, seconds: float) -> dict[str, float]:
    manifest, data = Repository(repo).load_verified(name, "1")
    runtime = OrtRuntime(data, provider="cuda", name=name)
    if runtime.provider != "cuda":
        raise SystemExit("the CUDA provider did not start; see the warning above")
    by_batch = inprocess.measure(manifest, runtime.run, BATCHES, seconds, warmups=3)
    return {str(batch): rows for batch, rows in by_batch.items()}


def run(out: Path, seconds: float = 3.0) -> dict[str, Any]:
    import onnxruntime

    if CUDA not in onnxruntime.get_available_providers():
        raise SystemExit("no CUDA provider: run this on an NVIDIA machine with onnx-gateway[gpu] installed")
    work = Path(__file__).resolve().parent / ".work"
    work.mkdir(exist_ok=True)
    repo, bench = models.build(work, ("mlp", "gbm"))
    results: dict[str, Any] = {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "device": _device(), "in_process": {}, "gateway": {}}  # fmt: skip
    for name in ("mlp", "gbm"):
        results["in_process"][name] = _in_process(repo, name, seconds)
    x = bench["mlp"].sample
    with servers.running(servers.gateway(repo, "--provider", "cuda", "--no-metrics", "--max-batch-rows", "4096"),
                         "/readyz") as url:  # fmt: skip
        for name in ("mlp", "gbm"):
            datatype = _input_datatype(url, name)
            dtype = np.float64 if datatype == "FP64" else np.float32
            for rows in (256, 1024):
                matrix = np.ascontiguousarray(x.sample(rows, replace=True, random_state=0).to_numpy(dtype))
                header = msgspec.json.encode({"inputs": [{"name": "input", "shape": [rows, 30], "datatype": datatype,
                                                          "parameters": {"binary_data_size": matrix.nbytes}}],
                                              "parameters": {"binary_data_output": True}})  # fmt: skip
                target = load.Target(f"{url}/v2/models/{name}/infer", header + matrix.tobytes(),
                                     "application/octet-stream",
                                     (("Inference-Header-Content-Length", str(len(header))),))  # fmt: skip
                load.closed_loop(target, 8, 2.0)
                r = load.closed_loop(target, 8, seconds * 2).as_dict()
                r["rows_per_s"] = r["rps"] * rows  # type: ignore[operator]
                r["in_process_rows_per_s"] = results["in_process"][name][str(rows)]
                r["ratio"] = r["rows_per_s"] / r["in_process_rows_per_s"]
                results["gateway"][f"{name} {rows} rows v2 binary"] = r
    out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{dt.date.today().isoformat()}-{socket.gethostname()}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# GPU benchmark {results['started']}", "", f"Device: {results['device']}", "",
             "| model | " + " | ".join(map(str, BATCHES)) + " |", "| --- |" + " ---: |" * len(BATCHES)]  # fmt: skip
    for name, by_batch in results["in_process"].items():
        lines.append(
            f"| {name} in-process rows/s | " + " | ".join(f"{by_batch[str(b)]:,.0f}" for b in BATCHES) + " |"
        )
    lines += [
        "",
        "| gateway scenario | rows/s | in-process rows/s | ratio | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, r in results["gateway"].items():
        lines.append(f"| {label} | {r['rows_per_s']:,.0f} | {r['in_process_rows_per_s']:,.0f} | {r['ratio']:.2f} "
                     f"| {r['p99_ms']:.2f} |")  # fmt: skip
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


def _input_datatype(url: str, name: str) -> str:
    import httpx

    return str(httpx.get(f"{url}/v2/models/{name}").json()["inputs"][0]["datatype"])
