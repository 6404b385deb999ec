"""Metrics scraped after real traffic, spans from an in-memory exporter, JSON log lines,
drift that rises on shifted traffic.

Covers `gateway/observability/drift.py`, `gateway/observability/metrics.py`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import time

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_diabetes

from gateway.app import create_app
from gateway.artifacts.repository import Repository
from gateway.observability.drift import DriftMonitor
from gateway.settings import build_settings
from tests.conftest import InProcessServer, start_server


def _records(n: int, shift: float = 0.0) -> list[dict]:
    x, _ = load_diabetes(return_X_y=True, as_frame=True)
    return (x.sample(n, replace=True, random_state=n) + shift).to_dict(orient="records")


def _samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples, name: str, **labels) -> float:
    found = [
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert found, f"no sample {name} {labels}"
    return sum(found)


@pytest.fixture(scope="module")
def observed(demo_repo, tmp_path_factory):
    """A fresh server with known traffic: 30 good records, 2 invalid, 1 msgpack-less 415."""
    tmp = tmp_path_factory.mktemp("observed")
    srv = start_server(demo_repo, tmp, "--log-level", "info")
    with httpx.Client() as client:
        for record in _records(30):
            assert (
                client.post(
                    f"{srv.url}/v1/models/diabetes/predict", json=record, headers={"x-request-id": "req-obs"}
                ).status_code
                == 200
            )
        for _ in range(2):
            assert client.post(f"{srv.url}/v1/models/diabetes/predict", json={"age": "x"}).status_code == 422
        text = client.get(f"{srv.url}/metrics").text
    yield srv, text
    srv.stop()


def test_request_histogram_counts_and_buckets(observed):
    _, text = observed
    samples = _samples(text)
    ok = {"model": "diabetes", "version": "1", "route": "predict", "code": "200"}
    assert _value(samples, "gateway_request_duration_seconds_count", **ok) == 30
    buckets = sorted(
        (
            (float(s.labels["le"]), s.value)
            for s in samples
            if s.name == "gateway_request_duration_seconds_bucket" and s.labels["code"] == "200"
        ),
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1] == (float("inf"), 30)
    assert buckets[0][0] <= 0.0001  # sub-millisecond resolution
    assert _value(samples, "gateway_requests_total", **ok) == 30
    assert _value(samples, "gateway_request_duration_seconds_count", code="422") == 2
    assert _value(samples, "gateway_rejected_total", model="diabetes", reason="invalid") == 2


def test_batch_queue_inference_and_prediction_metrics(observed):
    _, text = observed
    samples = _samples(text)
    mv = {"model": "diabetes", "version": "1"}
    assert _value(samples, "gateway_queue_wait_seconds_count", **mv) == 30
    assert _value(samples, "gateway_batch_rows_sum", **mv) == 30
    assert _value(samples, "gateway_inference_duration_seconds_count", provider="cpu", **mv) >= 1
    assert _value(samples, "gateway_prediction_count", **mv) == 30
    info = [s for s in samples if s.name == "gateway_model_info" and s.labels["model"] == "diabetes"]
    assert len(info) == 1 and info[0].value == 1 and len(info[0].labels["sha256"]) == 64


def test_promtool_accepts_the_exposition(observed, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    _, text = observed
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _log_entries(srv, wanted: int, request_id: str) -> tuple[list[dict], list[dict]]:
    """Access lines are written in batches at most 100 ms apart: wait for them."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
        requests = [e for e in lines if e.get("event") == "request" and e.get("request_id") == request_id]
        if len(requests) >= wanted or time.monotonic() > deadline:
            return lines, requests
        time.sleep(0.05)


def test_json_request_log_lines(observed):
    srv, _ = observed
    lines, requests = _log_entries(srv, 30, "req-obs")
    assert len(requests) == 30
    entry = requests[0]
    assert entry["model"] == "diabetes" and entry["version"] == "1" and entry["status"] == 200
    assert entry["latency_ms"] > 0 and entry["rows"] == 1
    # The body's own sha256: `sha256sum` of a logged request finds its line.
    sent = {hashlib.sha256(httpx.Request("POST", srv.url, json=r).content).hexdigest() for r in _records(30)}
    assert {e["input_sha256"] for e in requests} == sent
    assert set(entry["prediction"]) == {"mean", "min", "max"}
    assert "inputs" not in entry  # raw inputs only when explicitly enabled
    assert entry["ts"].endswith("+00:00") and entry["level"] == "info"
    events = {e.get("event") for e in lines}
    assert {"ready", "startup"} <= events


def test_raw_inputs_logged_only_when_enabled(demo_repo, tmp_path):
    srv = start_server(demo_repo, tmp_path, "--log-inputs")
    try:
        record = _records(1)[0]
        httpx.post(f"{srv.url}/v1/models/diabetes/predict", json=record, headers={"x-request-id": "raw-1"})
    finally:
        srv.stop()
    entry = next(json.loads(line) for line in srv.log().splitlines() if '"raw-1"' in line)
    assert json.loads(entry["inputs"]) == pytest.approx(record)


def test_drift_low_on_reference_traffic_and_high_when_shifted(demo_repo):
    manifest = Repository(demo_repo).manifest("diabetes", "1")
    x, _ = load_diabetes(return_X_y=True, as_frame=True)
    same = DriftMonitor(manifest)
    same.update({c: x[c].to_numpy() for c in x.columns})
    assert max(same.values().values()) < 0.1
    shifted = DriftMonitor(manifest)
    shifted.update({c: x[c].to_numpy() + 2 * x[c].std() for c in x.columns})
    assert min(shifted.values().values()) > 0.2


def test_drift_gauge_rises_over_http(demo_repo, tmp_path):
    srv = start_server(demo_repo, tmp_path, "--log-level", "warning")
    try:
        r = httpx.post(f"{srv.url}/v1/models/diabetes/predict", json={"instances": _records(200, shift=0.1)})
        assert r.status_code == 200
        samples = _samples(httpx.get(f"{srv.url}/metrics").text)
    finally:
        srv.stop()
    psi = {s.labels["feature"]: s.value for s in samples if s.name == "gateway_feature_drift_psi"}
    assert set(psi) == {"age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"}
    assert min(psi.values()) > 0.2
    assert _value(samples, "gateway_feature_out_of_range_total", model="diabetes") > 0


def test_metrics_cover_all_workers(demo_repo, tmp_path):
    srv = start_server(demo_repo, tmp_path, "--workers", "2", "--log-level", "warning")
    try:
        for record in _records(40):
            with httpx.Client() as client:  # a new connection each time spreads the workers
                assert client.post(f"{srv.url}/v1/models/diabetes/predict", json=record).status_code == 200
        time.sleep(1.5)  # each worker publishes its snapshot every second
        samples = _samples(httpx.get(f"{srv.url}/metrics").text)
        ok = {"model": "diabetes", "route": "predict", "code": "200"}
        assert _value(samples, "gateway_requests_total", **ok) == 40
    finally:
        srv.stop()


def test_traces_request_queue_and_linked_batch_spans(demo_repo):
    exporter = InMemorySpanExporter()
    settings = build_settings({"repo": str(demo_repo), "log_level": "warning"}, {})
    app = create_app(settings, span_exporter=exporter)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with InProcessServer(app) as url:

        async def burst() -> None:
            async with httpx.AsyncClient() as client:
                await asyncio.gather(
                    *(
                        client.post(
                            f"{url}/v1/models/diabetes/predict",
                            json=r,
                            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"} if i == 0 else {},
                        )
                        for i, r in enumerate(_records(24))
                    )
                )

        asyncio.run(burst())
        time.sleep(0.2)
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    queues = [s for s in spans if s.name == "queue_wait"]
    batches = [s for s in spans if s.name == "batch"]
    assert len(servers) == 24 and len(queues) == 24
    traced = [s for s in servers if format(s.context.trace_id, "032x") == trace_id]
    assert len(traced) == 1 and traced[0].parent.span_id == 0x00F067AA0BA902B7
    by_id = {s.context.span_id: s for s in servers}
    assert all(q.parent.span_id in by_id for q in queues)
    linked = {link.context.span_id for b in batches for link in b.links}
    assert linked == set(by_id)
    assert sum(b.attributes["batch.requests"] for b in batches) == 24
    b = batches[0]
    assert b.attributes["inference.provider"] == "cpu" and b.attributes["model.version"] == "1"
    assert b.attributes["batch.rows"] >= 1 and b.attributes["batch.dispatch_reason"] in ("idle", "full")
    assert traced[0].attributes["http.response.status_code"] == 200
    assert np.all([q.end_time >= q.start_time for q in queues])


def test_sampling_is_parent_based_with_a_root_ratio(monkeypatch):
    from gateway.observability.telemetry import Telemetry

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.0")
    telemetry = Telemetry(span_exporter=InMemorySpanExporter())
    assert telemetry.start_span("POST predict", None, None) is None  # root, ratio 0
    parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-"
    assert telemetry.start_span("POST predict", parent + b"00", None) is None  # caller said no
    span = telemetry.start_span("POST predict", parent + b"01", b"vendor=x")
    assert (
        span is not None
        and format(span.get_span_context().trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    )
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    quarter = Telemetry(span_exporter=InMemorySpanExporter())
    kept = sum(quarter.start_span("x", None, None) is not None for _ in range(4000))
    assert 800 < kept < 1200


def test_values_at_the_trained_bounds_are_not_counted_out_of_range(float32_repo, tmp_path):
    """A forest takes float32: its inputs are compared with the trained bounds in float32,
    so traffic at a bound is inside (28.11 is 28.1100006 in float32)."""
    manifest = Repository(float32_repo).manifest("breast_cancer", "1")
    assert manifest.inputs[0].datatype == "FP32"
    at_bounds = [{f.name: f.min for f in manifest.features}, {f.name: f.max for f in manifest.features}]
    srv = start_server(float32_repo, tmp_path, "--log-level", "warning")
    try:
        r = httpx.post(f"{srv.url}/v1/models/breast_cancer/predict", json={"instances": at_bounds})
        assert r.status_code == 200, r.text
        samples = _samples(httpx.get(f"{srv.url}/metrics").text)
    finally:
        srv.stop()
    assert _value(samples, "gateway_requests_total", model="breast_cancer") == 1
    outside = [
        s.labels["feature"]
        for s in samples
        if s.name == "gateway_feature_out_of_range_total"
        and s.labels.get("model") == "breast_cancer"
        and s.value
    ]
    assert outside == []
