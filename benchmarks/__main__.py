"""`python -m benchmarks run [--quick]`: every server on the same machine in one run.

Servers: the gateway (records and V2 APIs), the seed recipe (FastAPI + pydantic + the
pickled model), the HTTP ceilings (a plain ASGI no-op and a Starlette no-op on the same
uvicorn), and ONNX Runtime in-process (the compute ceiling). The server runs on CPU 0 and
the load generators on CPU 1 where the machine has two; ratios between servers measured in
the same run are what count, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from benchmarks import grpc_bench, inprocess, large, load, models, perf_analyzer, report, servers
from benchmarks.progress import progress

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent / ".work"


def _environment() -> dict[str, Any]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    import onnxruntime

    return {
        "host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__, "pinned": servers.can_pin(),
        "load_generator": "wrk (closed loop) + asyncio open loop" if shutil.which("wrk") else "asyncio",
    }  # fmt: skip


def run(quick: bool, out: Path) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    servers.pin_self()
    seconds = 2.0 if quick else 6.0
    sweep_seconds = 1.5 if quick else 4.0
    conns = [16] if quick else [1, 16, 64]
    batch_sizes = [1, 32, 256] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    WORK.mkdir(exist_ok=True)
    progress("training and converting the benchmark models")
    repo, bench = models.build(WORK, ("pipeline", "forest", "mlp"))
    forest = bench["forest"].sample
    record = forest.iloc[0].to_dict()
    record_json = msgspec.json.encode(record)
    row = forest.iloc[:1].to_numpy(np.float32)
    v2_json = msgspec.json.encode({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                               "data": row.ravel().tolist()}]})  # fmt: skip
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "mode": "quick" if quick else "full",
        "environment": _environment(), "batch_sizes": batch_sizes, "single_row": {}, "open_loop": {},
        "scenarios": {}, "in_process": {},
    }  # fmt: skip

    progress("compute ceiling: ONNX Runtime in-process")
    for name in bench:
        by_batch = inprocess.rows_per_second(repo, name, batch_sizes, 0.3 if quick else 1.0)
        results["in_process"][name] = {str(k): v for k, v in by_batch.items()}

    gw = servers.gateway(repo)
    trace_sink = servers.TraceSink()
    observed_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": trace_sink.endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
    }  # fmt: skip
    single = {
        "gateway records": ([*gw, "--no-metrics"], "/readyz", "/v1/models/forest/predict", record_json, {}),
        "gateway records +metrics +1% traces": (gw, "/readyz", "/v1/models/forest/predict", record_json,
                                                observed_env),
        "gateway records +metrics +traces +logs": (servers.gateway(repo, "--log-level", "info"), "/readyz",
                                                   "/v1/models/forest/predict", record_json, observed_env),
        "gateway v2": ([*gw, "--no-metrics"], "/readyz", "/v2/models/forest/infer", v2_json, {}),
        "seed fastapi": (servers.uvicorn_app("benchmarks.baselines.seed_fastapi:app"), "/health", "/predict",
                         record_json, {"SEED_MODEL": str(bench["forest"].joblib_path)}),
        "ceiling asgi": (servers.uvicorn_app("benchmarks.baselines.ceilings:asgi_app"), "/health", "/predict",
                         record_json, {}),
        "ceiling starlette": (servers.uvicorn_app("benchmarks.baselines.ceilings:starlette_app"), "/health",
                              "/predict", record_json, {}),
    }  # fmt: skip
    on_granian = {
        "gateway records (granian)": servers.granian_app(
            "gateway.cli.serve:app_factory",
            {"repo": str(repo), "metrics": False, "poll_seconds": 0, "log_level": "warning"},
        ),
        "ceiling asgi (granian)": servers.granian_app("benchmarks.baselines.ceilings:asgi_app"),
    }
    for label, server in on_granian.items():
        if server is not None and not quick:
            argv, env = server
            single[label] = (argv, "/readyz" if label.startswith("gateway") else "/health",
                             "/v1/models/forest/predict" if label.startswith("gateway") else "/predict",
                             record_json, env)  # fmt: skip
    log = WORK / "servers.log"
    for label, (argv, health, path, body, env) in single.items():
        progress(f"single-row closed loop + open-loop sweep: {label}")
        with servers.running(argv, health, env, log) as url:
            target = load.Target(url + path, body)
            load.closed_loop(target, 8, 1.0, servers.LOAD_CPU)  # warm the server and its caches
            results["single_row"][label] = {
                str(c): load.closed_loop(target, c, seconds, servers.LOAD_CPU).as_dict() for c in conns
            }
            if label.startswith("seed"):
                rates = [25.0, 50, 100, 200] if quick else [25.0, 50, 100, 150, 200, 300, 400]
            else:
                rates = (
                    [500.0, 2000, 4000] if quick else [500.0, 1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000]
                )
            results["open_loop"][label] = load.sweep(target, rates, sweep_seconds, [10.0, 50.0])
    trace_sink.close()
    if perf_analyzer.available():
        progress("perf_analyzer beside wrk: gateway V2, single row")
        with servers.running([*gw, "--no-metrics"], "/readyz", None, log) as url:
            results["perf_analyzer"] = perf_analyzer.compare(url, "forest", v2_json, conns, seconds)
    if grpc_bench.available():
        progress("V2 over gRPC beside HTTP (perf_analyzer both): single row, 256-row raw tensors")
        results["grpc"] = grpc_bench.run(repo, "forest", row, conns, seconds, log)

    progress("heavy model under concurrency: batching on vs --max-batch-rows 1")
    mlp_record = msgspec.json.encode(bench["mlp"].sample.iloc[0].to_dict())
    heavy = {}
    for label, flags in (("batched", []), ("unbatched", ["--max-batch-rows", "1"])):
        with servers.running(servers.gateway(repo, "--no-metrics", *flags), "/readyz", None, log) as url:
            target = load.Target(url + "/v1/models/mlp/predict", mlp_record)
            load.closed_loop(target, 8, 1.0, servers.LOAD_CPU)
            heavy[label] = load.closed_loop(target, 64, seconds, servers.LOAD_CPU).as_dict()
    results["heavy_mlp_c64"] = heavy

    progress("256-row requests: V2 binary and records JSON vs in-process on the same rows")
    results["batch256_forest_c4"] = large.measure(repo, forest, seconds, 1, log)

    progress("single-row V2 JSON against records, alternating on one app")
    results["v2_vs_records"] = v2_vs_records(repo, record_json, v2_json, quick)

    _summarize(results)
    stem = f"{started.strftime('%Y-%m-%d')}-{socket.gethostname()}" + ("-quick" if quick else "")
    for path in report.write(results, out, stem):
        progress(f"wrote {path}")
    return results


def v2_vs_records(repo: Path, record_json: bytes, v2_json: bytes, quick: bool) -> dict[str, Any]:
    """Both APIs on the forest, one app, alternating rounds (ASGI in-process): the ratio of
    their CPU per request is V2's throughput as a fraction of records'."""
    from benchmarks import asgi_ab

    cases = {
        "records": ("/v1/models/forest/predict", record_json),
        "v2 json": ("/v2/models/forest/infer", v2_json),
    }
    result = asgi_ab.alternate(str(repo), cases, 3 if quick else 9, 1000 if quick else 3000)
    lowest = result["lowest_cpu_us_per_request"]
    result["v2_rps_over_records_rps"] = lowest["records"] / lowest["v2 json"]
    return result


def _summarize(results: dict[str, Any]) -> None:
    """Ratios between servers at the same concurrency (16 connections), from this run."""
    s, o, g = results["single_row"], results["open_loop"], results["scenarios"]
    at = "16"
    gw, seed, ceiling = s["gateway records"][at], s["seed fastapi"][at], s["ceiling asgi"][at]
    obs, logs = s["gateway records +metrics +1% traces"][at], s["gateway records +metrics +traces +logs"][at]
    g["gateway / seed throughput (single row, forest, 16 conns)"] = gw["rps"] / max(seed["rps"], 1e-9)
    g["gateway p99 / seed p99"] = gw["p99_ms"] / max(seed["p99_ms"], 1e-9)
    g["gateway / HTTP ceiling throughput"] = gw["rps"] / ceiling["rps"]
    g["gateway p99 / ceiling p99"] = gw["p99_ms"] / max(ceiling["p99_ms"], 1e-9)
    g["gateway +metrics +1% traces / HTTP ceiling"] = obs["rps"] / ceiling["rps"]
    g["gateway +metrics +1% traces / gateway"] = obs["rps"] / gw["rps"]
    g["gateway +metrics +traces +access logs / gateway"] = logs["rps"] / gw["rps"]
    mlp = results["in_process"]["mlp"]
    g["heavy MLP in-process ceiling: best batch / batch 1 rows/s"] = max(mlp.values()) / mlp["1"]
    heavy = results["heavy_mlp_c64"]
    g["heavy MLP: batched / unbatched throughput"] = heavy["batched"]["rps"] / max(
        heavy["unbatched"]["rps"], 1e-9
    )
    big = results["batch256_forest_c4"]
    g["256-row V2 binary rows/s / in-process ORT on the same 256 rows"] = big["v2 binary"]["ratio"]
    g["256-row records JSON rows/s / in-process ORT on the same 256 rows"] = big["records json"]["ratio"]
    g["256-row columns JSON rows/s / in-process ORT on the same 256 rows"] = big["columns json"]["ratio"]
    g["single-row V2 JSON / records throughput (alternating, one app)"] = results["v2_vs_records"][
        "v2_rps_over_records_rps"
    ]
    if "grpc" in results:
        grpc_bench.summarize(results["grpc"], g)
    for label, sweep in o.items():
        g[f"open loop max req/s at p99 <= 10 ms: {label}"] = sweep["max_rps_p99_le_10ms"]

    def target(name: str, key: str, goal: float, extra: bool = True) -> dict[str, Any]:
        return {"name": name, "value": g[key], "goal": f">= {goal}", "met": g[key] >= goal and extra}

    results["targets"] = [
        target("gateway/seed throughput, lower p99", "gateway / seed throughput (single row, forest, 16 conns)", 50,
               g["gateway p99 / seed p99"] < 1),
        target("gateway/HTTP ceiling, p99 within 1.5x", "gateway / HTTP ceiling throughput", 0.9,
               g["gateway p99 / ceiling p99"] <= 1.5),
        target("gateway+metrics+1% traces/HTTP ceiling", "gateway +metrics +1% traces / HTTP ceiling", 0.85),
        target("gateway+metrics+1% traces/gateway", "gateway +metrics +1% traces / gateway", 0.9),
        target("heavy batched/unbatched", "heavy MLP: batched / unbatched throughput", 5),
        target("256-row V2 / in-process", "256-row V2 binary rows/s / in-process ORT on the same 256 rows", 0.4),
        target("single-row V2 JSON / records", "single-row V2 JSON / records throughput (alternating, one app)", 0.9),
        target("256-row records JSON / in-process", "256-row records JSON rows/s / in-process ORT on the same 256 rows",
               large.TARGET_RECORDS),
    ]  # fmt: skip
    if "grpc" in results:
        results["targets"].append(target(
            "256-row gRPC raw / in-process", "256-row gRPC raw rows/s / in-process ORT at 256 (perf_analyzer)", 0.7
        ))  # fmt: skip


def _v2_command(quick: bool) -> dict[str, Any]:
    WORK.mkdir(exist_ok=True)
    repo, bench = models.build(WORK, ("forest",))
    forest = bench["forest"].sample
    row = forest.iloc[:1].to_numpy(np.float32)
    v2_json = msgspec.json.encode({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                               "data": row.ravel().tolist()}]})  # fmt: skip
    return v2_vs_records(repo, msgspec.json.encode(forest.iloc[0].to_dict()), v2_json, quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (  # name, help, what --quick does (None: no --quick)
        ("run", "run every server and write benchmarks/results/", "short runs (about 3 minutes): a smoke test"),
        ("gpu", "CUDA: in-process vs the gateway, heavy models, batch 1..4096", None),
        ("score", "gateway score rows/s vs in-process ONNX Runtime at batch 4,096",
         "200k rows instead of 1M: a smoke test"),
        ("grpc", "V2 over gRPC beside HTTP (perf_analyzer): single row and 256 rows",
         "16 connections, 2 s: a smoke test"),
        ("perf", "perf_analyzer beside wrk on the gateway's V2 endpoint", "16 connections, 2 s: a smoke test"),
        ("large", "256-row V2 binary, records and columns JSON vs in-process ORT on the same rows",
         "one short round: a smoke test"),
        ("production", "the production configuration against the bare gateway", "one short round: a smoke test"),
        ("shapes", "batching by shape: mixed sequence lengths vs uniform, in-process", "2 s per case"),
        ("v2", "single-row V2 JSON against records on one app, alternating", "3 rounds of 1,000: a smoke test"),
        ("explain", "explain rows/s beside shap.TreeExplainer in-process: forest and booster, 1 and 256 rows", None),
    )  # fmt: skip
    for name, help_text, quick in commands:
        command = sub.add_parser(name, help=help_text)
        if quick is not None:
            command.add_argument("--quick", action="store_true", help=quick)
        command.add_argument("--out", type=Path, default=RESULTS)
    ab = sub.add_parser(
        "ab", help="this tree against a git revision: single-row records, alternating wrk rounds"
    )
    ab.add_argument("--revision", default="9fc528c")
    ab.add_argument("--rounds", type=int, default=6)
    ab.add_argument("--seconds", type=float, default=8.0)
    ab.add_argument("--connections", type=int, default=64)
    ab.add_argument("--out", type=Path, default=RESULTS)
    k = sub.add_parser("soak", help="mixed valid and invalid traffic for a long, bounded time")
    k.add_argument("--seconds", type=float, default=600.0)
    k.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.command == "ab":
        from benchmarks import revision_ab

        ab_results = revision_ab.run(args.revision, args.rounds, args.seconds, args.connections, args.out)
        print(revision_ab.markdown(ab_results))
        return 0
    if args.command == "production":
        from benchmarks import production

        print(production.markdown(production.run(args.quick, args.out, WORK)))
        return 0
    if args.command == "shapes":
        from benchmarks import shapes

        print(shapes.markdown(shapes.run(args.quick)))
        return 0
    if args.command == "v2":
        v2_results = _v2_command(args.quick)
        if not args.quick:  # a smoke test's numbers are not worth keeping
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / f"v2-json-{dt.date.today().isoformat()}.json"
            path.write_text(json.dumps(v2_results, indent=2))
        print(json.dumps(v2_results, indent=1))
        return 0
    if args.command == "explain":
        import tempfile

        from benchmarks import explain

        with tempfile.TemporaryDirectory() as work:
            print(explain.markdown(explain.run(args.out, Path(work))["explain"]))
        return 0
    if args.command == "large":
        print(large.markdown(large.run(args.quick, args.out, WORK)))
        return 0
    if args.command == "soak":
        from benchmarks import soak

        soak.run(args.out, args.seconds)
        return 0
    if args.command == "score":
        from benchmarks import score

        print(score.markdown(score.run(args.quick, args.out, WORK)))
        return 0
    if args.command == "grpc":
        print("\n".join(grpc_bench.markdown(grpc_bench.main(args.quick, args.out, WORK)["grpc"])))
        return 0
    if args.command == "perf":
        perf_analyzer.run(args.quick, args.out, WORK)
        return 0
    if args.command == "gpu":
        from benchmarks import gpu

        gpu.run(args.out)
        return 0
    results = run(args.quick, args.out)
    print(report.markdown(results))
    print(json.dumps({t["name"]: round(t["value"], 3) for t in results["targets"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
