"""Issue 16, observability under attack: a client's traceparent cannot force tracing
beyond the configured sampler (L6); a killed worker's counters do not vanish (L11)."""

from __future__ import annotations

import subprocess
import sys

import msgspec
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.observability.metrics import RETIRED_FILE, Counter, Gauge, Registry
from gateway.observability.telemetry import Telemetry

SAMPLED = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_l6_a_sampled_traceparent_does_not_force_tracing_under_a_ratio_sampler(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.0")
    telemetry = Telemetry(span_exporter=InMemorySpanExporter())
    assert all(telemetry.start_span("POST infer", SAMPLED, None) is None for _ in range(200))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    quarter = Telemetry(span_exporter=InMemorySpanExporter())
    kept = [quarter.start_span("POST infer", SAMPLED, None) for _ in range(4000)]
    traced = [s for s in kept if s is not None]
    assert 800 < len(traced) < 1200  # the configured share, whatever the client says
    # a span that is kept still continues the caller's trace
    assert format(traced[0].get_span_context().trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_l6_a_parent_based_sampler_follows_the_parent_only_when_configured(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.0")
    telemetry = Telemetry(span_exporter=InMemorySpanExporter())
    assert telemetry.start_span("POST infer", SAMPLED, None) is not None


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _registry(shared) -> tuple[Registry, Counter, Gauge]:
    registry = Registry(str(shared))
    counter = registry.add(Counter("gateway_requests_total", "requests", ("code",)))
    gauge = registry.add(Gauge("gateway_ready", "ready", ()))
    return registry, counter, gauge


def test_l11_a_killed_workers_counts_stay_in_the_totals(tmp_path):
    mine, counter, gauge = _registry(tmp_path)
    counter.inc(("200",), 3)
    gauge.set((), 1)
    dead_worker, dead_counter, dead_gauge = _registry(tmp_path)
    dead_counter.inc(("200",), 5)
    dead_gauge.set((), 0)
    snapshot = dead_worker._snapshot()
    for pid in (_dead_pid(), _dead_pid()):  # two dead workers, each counted once
        (tmp_path / f"{pid}.msgpack").write_bytes(msgspec.msgpack.encode(snapshot))
    for _ in range(3):  # render after render, the totals never go backwards
        text = mine.render()
        assert 'gateway_requests_total{code="200"} 13' in text
        assert "gateway_ready 1" in text  # a dead worker's gauges leave with it
    assert (tmp_path / RETIRED_FILE).exists()
    assert not any(p.stem.isdigit() for p in tmp_path.glob("*.msgpack"))
    # a replacement worker starts from zero and still reports the retired counts
    fresh, fresh_counter, _ = _registry(tmp_path)
    fresh_counter.inc(("200",), 1)
    assert 'gateway_requests_total{code="200"} 11' in fresh.render()
