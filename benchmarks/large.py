"""`python -m benchmarks large`: 256-row requests against in-process ONNX Runtime.

The same 256 forest rows sent as V2 binary tensors, as records JSON (`{"instances":
[...]}` with the data set's own column names) and as columns JSON (`{"inputs": {name:
[...]}}`, each name once), 4 connections, closed
loop, against ONNX Runtime called in-process on one thread on those same rows, measured
in each round on the server's CPU (a tree ensemble's time depends on the rows it walks).
The compute-ceiling table's figure at 256 (uniform random rows) is reported beside it.
Rounds alternate the request kinds; the median round counts.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import numpy as np
import pandas as pd

from benchmarks import inprocess, load, models, report, servers
from benchmarks.progress import progress
from gateway.records.codec import RecordCodec
from gateway.settings import Settings

T = TypeVar("T")
ROWS = 256
TARGET_RECORDS = 0.60  # records JSON rows/s / in-process ORT rows/s on the same rows


def requests(rows: pd.DataFrame) -> dict[str, tuple[str, bytes, str, tuple[tuple[str, str], ...]]]:
    """Path, body, content type and extra headers of each request kind."""
    matrix = np.ascontiguousarray(rows.to_numpy(np.float32))
    header = msgspec.json.encode({
        "inputs": [{"name": "input", "shape": list(matrix.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": matrix.nbytes}}],
        "parameters": {"binary_data_output": True},
    })  # fmt: skip
    return {
        "v2 binary": ("/v2/models/forest/infer", header + matrix.tobytes(), "application/octet-stream",
                      (("Inference-Header-Content-Length", str(len(header))),)),
        "records json": ("/v1/models/forest/predict",
                         msgspec.json.encode({"instances": rows.to_dict(orient="records")}),
                         "application/json", ()),
        "columns json": ("/v1/models/forest/predict",
                         msgspec.json.encode({"inputs": rows.to_dict(orient="list")}),
                         "application/json", ()),
    }  # fmt: skip


def codec_ceiling(repo: Path, rows: pd.DataFrame, runs: int = 200) -> dict[str, Any]:
    """Best-of timings (µs) of the records codec's steps and of the model on these rows:
    the highest share of in-process speed each JSON form could reach if HTTP cost nothing."""
    manifest, session = inprocess.one_thread_session(repo, "forest")
    # The server's own row limit: below it a body is not counted before it is decoded.
    codec = RecordCodec(manifest, max_rows=Settings(repo=str(repo)).request_rows_limit)
    names = [o.name for o in session.get_outputs()]

    def best(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times) * 1e6

    out: dict[str, Any] = {}
    for form, body in (("records json", {"instances": rows.to_dict(orient="records")}),
                       ("columns json", {"inputs": rows.to_dict(orient="list")})):  # fmt: skip
        raw = msgspec.json.encode(body)
        payload, shape = codec.decode(raw)
        feeds, _ = codec.to_feeds(payload, shape)
        outputs = dict(zip(names, session.run(None, feeds), strict=True))
        model = best(lambda: session.run(None, feeds))  # noqa: B023 -- called at once
        steps = {
            "decode_us": best(lambda: codec.decode(raw)),  # noqa: B023
            "to_feeds_us": best(lambda: codec.to_feeds(payload, shape)),  # noqa: B023
            "encode_us": best(lambda: codec.encode(outputs)),  # noqa: B023
        }
        out[form] = {"body_bytes": len(raw), "model_us": round(model, 1),
                     **{k: round(v, 1) for k, v in steps.items()},
                     "codec_over_model": sum(steps.values()) / model,
                     "ceiling": model / (model + sum(steps.values()))}  # fmt: skip
    return out


def measure(repo: Path, forest: pd.DataFrame, seconds: float, rounds: int, log: Path) -> dict[str, Any]:
    """Each request kind's rows/s (median round) and the in-process figures beside them."""
    rows = forest.sample(ROWS, replace=True, random_state=0)
    kinds = requests(rows)
    feeds = {"input": np.ascontiguousarray(rows.to_numpy(np.float32))}
    found: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    same_rows: list[float] = []
    with servers.running([*servers.gateway(repo), "--no-metrics"], "/readyz", None, log) as url:
        targets = {
            k: load.Target(url + path, body, ctype, extra) for k, (path, body, ctype, extra) in kinds.items()
        }
        for target in targets.values():
            load.closed_loop(target, 4, 1.0, servers.LOAD_CPU)
        for n in range(rounds):
            progress(f"{ROWS}-row requests, round {n + 1}/{rounds}")
            for kind, target in targets.items():
                r = load.closed_loop(target, 4, seconds, servers.LOAD_CPU).as_dict()
                r["rows_per_s"] = round(r["rps"] * ROWS, 1)  # type: ignore[operator]
                found[kind].append(r)
            # In the same round, on the server's CPU, as the server would run it.
            same_rows.append(
                _pinned(lambda: inprocess.rows_per_second_on(repo, "forest", feeds, min(seconds, 2.0)))
            )
    random_rows = _pinned(lambda: inprocess.rows_per_second(repo, "forest", [ROWS], 1.0)[ROWS])
    ceiling = _pinned(lambda: codec_ceiling(repo, rows))
    in_process = statistics.median(same_rows)
    result: dict[str, Any] = {
        "rows": ROWS,
        "connections": 4,
        "in_process_same_rows": round(in_process, 1),
        "in_process_same_rows_rounds": [round(x, 1) for x in same_rows],
        "in_process_uniform_random_rows": round(random_rows, 1),
        "codec_ceiling": ceiling,
    }
    for kind, runs in found.items():
        median = statistics.median(r["rows_per_s"] for r in runs)
        result[kind] = {"rows_per_s": median, "ratio": median / in_process, "rounds": runs}
    return result


def _pinned(fn: Callable[[], T]) -> T:
    """Run `fn` on the server CPU (where the gateway's session runs), then move back."""
    if not servers.can_pin():
        return fn()
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {servers.SERVER_CPU})
    try:
        return fn()
    finally:
        os.sched_setaffinity(0, before)


def run(quick: bool, out: Path, work: Path) -> dict[str, Any]:
    servers.pin_self()
    started = dt.datetime.now(dt.UTC)
    progress("training and converting the forest")
    repo, bench = models.build(work, ("forest",))
    result = measure(repo, bench["forest"].sample, 2.0 if quick else 4.0, 1 if quick else 5,
                     work / "large-servers.log")  # fmt: skip
    result |= {"started": started.isoformat(timespec="seconds"), "host": socket.gethostname(),
               "mode": "quick" if quick else "full"}  # fmt: skip
    path = report.save(result, markdown(result), out, "large", started, quick)
    progress(f"wrote {path}.{{json,md}}")
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# {result['rows']}-row requests vs in-process ONNX Runtime, {result.get('started', '')} "
        f"on {result.get('host', '')}",
        "",
        f"100-tree forest, {result['connections']} connections, closed loop; server pinned to CPU 0. "
        "In-process: one ONNX Runtime thread on CPU 0 on the same rows, measured in each round.",
        "",
        "| request | rows/s (median) | / in-process, same rows | rounds rows/s |",
        "| --- | ---: | ---: | --- |",
    ]
    for kind in ("v2 binary", "records json", "columns json"):
        r = result[kind]
        rounds = ", ".join(f"{x['rows_per_s']:,.0f}" for x in r["rounds"])
        lines.append(f"| {kind} | {r['rows_per_s']:,.0f} | {r['ratio']:.2f} | {rounds} |")
    lines += [
        "",
        f"In-process on the same rows: {result['in_process_same_rows']:,.0f} rows/s (rounds: "
        + ", ".join(f"{x:,.0f}" for x in result["in_process_same_rows_rounds"])
        + f"); on uniform random rows (the compute-ceiling table): "
        f"{result['in_process_uniform_random_rows']:,.0f} rows/s.",
        "",
        "The codec alone, best of 200 runs in-process on CPU 0 (µs): the most each JSON form "
        "could reach if HTTP cost nothing is model / (model + codec).",
        "",
        "| form | body bytes | model | decode | to tensors | encode | codec / model | ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {form} | {c['body_bytes']:,} | {c['model_us']:.0f} | {c['decode_us']:.0f} | "
            f"{c['to_feeds_us']:.0f} | {c['encode_us']:.0f} | {c['codec_over_model']:.2f} | {c['ceiling']:.2f} |"
            for form, c in result.get("codec_ceiling", {}).items()
        ),
        "",
        f"Goal: records JSON >= {TARGET_RECORDS:.2f} of in-process on the same rows: "
        + ("met" if result["records json"]["ratio"] >= TARGET_RECORDS else "not met")
        + ".",
    ]
    return "\n".join(lines) + "\n"
