"""Explain cost: `/explain` and `/predict` over HTTP (one client, sequential requests, the
server pinned to one core where taskset allows), the gateway's explainer in-process, and
shap.TreeExplainer in-process on the original model, on the same rows in the same run;
for a 100-tree forest and a 300-tree booster at 1 and 256 rows."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import joblib
import numpy as np


def _models(folder: Path):
    import lightgbm
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forest = RandomForestClassifier(100, max_depth=8, random_state=0).fit(x, y)
        booster = lightgbm.LGBMClassifier(n_estimators=300, num_leaves=31, verbose=-1).fit(x, y)
    return x, {"forest-100": (forest, "sklearn"), "lgbm-300": (booster, "lightgbm")}


def _rate(fn, rows: int, seconds: float = 3.0) -> tuple[float, float, float]:
    """rows/s and p99 latency (ms) of fn over about `seconds`, and rows per CPU second
    (this process's, all its threads): on a VM shared with other work, wall time measures
    the neighbours as much as fn; CPU time compares in-process work fairly."""
    times = []
    end = time.perf_counter() + seconds
    cpu = time.process_time()
    while time.perf_counter() < end or len(times) < 3:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    return rows * len(times) / sum(times), 1000 * float(np.percentile(times, 99)), rows * len(times) / cpu


def run(out: Path, work: Path) -> dict:
    import shap

    from converters import convert
    from converters._explain import _feeds
    from gateway.artifacts.repository import Repository
    from gateway.explain.explainer import Explainer

    x, models = _models(work)
    results: list[dict] = []
    for name, (model, framework) in models.items():
        path = work / f"{name}.joblib"
        joblib.dump(model, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert(path, name=name, version="1", repo=work / "repo", sample=x, framework=framework)
        manifest, data = Repository(work / "repo").load_verified(name, "1")
        explainer = Explainer(manifest, data)
        reference = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
        for rows in (1, 256):
            table = x.iloc[:rows]
            feeds = _feeds(manifest, table)
            ours, ours_p99, ours_cpu = _rate(lambda f=feeds, e=explainer: e.attribute(f), rows)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs, theirs_p99, theirs_cpu = _rate(lambda t=table, r=reference: r.shap_values(t), rows)
            results.append(
                {
                    "model": name,
                    "rows": rows,
                    "gateway_rows_s": ours,
                    "gateway_p99_ms": ours_p99,
                    "shap_rows_s": theirs,
                    "shap_p99_ms": theirs_p99,
                    "gateway_rows_cpu_s": ours_cpu,
                    "shap_rows_cpu_s": theirs_cpu,
                    "table": table,
                }
            )
    _over_http(work / "repo", results)
    for r in results:
        del r["table"]
    out.mkdir(parents=True, exist_ok=True)
    stem = f"explain-{time.strftime('%Y-%m-%d')}-vm"
    # The machine's load during the run: on a shared VM every figure scales with it.
    context = {"load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    (out / f"{stem}.json").write_text(json.dumps({"context": context, "results": results}, indent=2))
    (out / f"{stem}.md").write_text(markdown(results) + f"\n\nload average during the run: {context}\n")
    return {"explain": results}


def _over_http(repo: Path, results: list[dict]) -> None:
    import httpx
    import orjson

    from benchmarks.servers import gateway, running
    from converters.parity import _records

    with running(gateway(repo), "/readyz") as url, httpx.Client(timeout=60) as client:
        for r in results:
            body = orjson.dumps({"instances": _records(r["table"])})
            headers = {"content-type": "application/json"}
            for route in ("explain", "predict"):
                target = f"{url}/v1/models/{r['model']}/{route}"

                def call(target: str = target, body: bytes = body, headers: dict = headers) -> None:
                    client.post(target, content=body, headers=headers).raise_for_status()

                call()  # the first explain per version builds its explainer: not timed
                r[f"http_{route}_rows_s"], r[f"http_{route}_p99_ms"], _ = _rate(call, r["rows"])


def markdown(results: list[dict]) -> str:
    lines = [
        "| model | rows | HTTP /explain rows/s | p99 ms | HTTP /predict rows/s | p99 ms | "
        "explainer in-process rows/s | p99 ms | shap.TreeExplainer in-process rows/s | p99 ms | "
        "explainer rows per CPU s | shap rows per CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['rows']} | {r['http_explain_rows_s']:.0f} | {r['http_explain_p99_ms']:.2f} | "
            f"{r['http_predict_rows_s']:.0f} | {r['http_predict_p99_ms']:.2f} | "
            f"{r['gateway_rows_s']:.0f} | {r['gateway_p99_ms']:.2f} | "
            f"{r['shap_rows_s']:.0f} | {r['shap_p99_ms']:.2f} | "
            f"{r['gateway_rows_cpu_s']:.0f} | {r['shap_rows_cpu_s']:.0f} |"
        )
    return "\n".join(lines)
