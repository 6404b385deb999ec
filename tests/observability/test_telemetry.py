"""Telemetry (`gateway/observability/telemetry.py`) fed plain values, as DESIGN §3 has it:
an `Outcome` per request and a batch's facts (`gateway/observability/facts.py`), models as
their manifest and provider. No engine, lifecycle or front-door object is needed here.
The tracer set-up (`gateway/observability/tracing.py`) is covered with a span exporter, and
the instruments read here are `gateway/observability/instruments.py`'s."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import msgspec
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.artifacts.manifest import Feature
from gateway.observability.facts import Outcome
from gateway.observability.telemetry import Telemetry, input_digest, summarize
from gateway.types import Arrays
from tests.security.models import publish_records


@dataclass(frozen=True)
class Batch:
    """A batch's facts as any producer could state them: the batcher is not needed."""

    rows: int
    enqueued: list[float]
    started: float
    finished: float
    reason: str = "idle"
    failed: bool = False
    contexts: list[object] = field(default_factory=list)
    feeds: Arrays | None = None
    outputs: Arrays | None = None

    @property
    def requests(self) -> int:
        return len(self.enqueued)

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@pytest.fixture
def manifest(tmp_path):
    published = publish_records(tmp_path, "rec", "1", ("a", "b"))
    bounded = [Feature(name=f.name, dtype=f.dtype, min=0.0, max=1.0) for f in published.features]
    return msgspec.structs.replace(published, features=bounded)


def test_a_request_is_counted_by_model_route_and_status_and_a_refusal_by_reason():
    telemetry = Telemetry()
    telemetry.observe_request(Outcome("predict", "r1", 200, 0.004, "m", "1", rows=3), logged=False)
    telemetry.observe_request(Outcome("predict", "r2", 422, 0.001, "m", "1"), logged=False)
    telemetry.observe_request(Outcome("infer", "r3", 503, 0.001), logged=False)
    telemetry.registry.render()
    assert telemetry.requests.value(("m", "1", "predict", "200")) == 1
    assert telemetry.request_duration.count(("m", "1", "predict", "422")) == 1
    assert telemetry.rejected.value(("m", "1", "invalid")) == 1
    assert telemetry.rejected.value(("", "", "overloaded")) == 1
    assert telemetry.rejected.value(("m", "1", "ok")) == 0


def test_switched_off_it_counts_nothing():
    telemetry = Telemetry(enabled=False)
    telemetry.observe_request(Outcome("predict", "r1", 200, 0.004, "m", "1"), logged=False)
    telemetry.registry.render()
    assert telemetry.requests.value(("m", "1", "predict", "200")) == 0


def test_a_batch_gives_queue_wait_inference_time_rows_predictions_and_ranges(manifest):
    telemetry = Telemetry()
    feeds = {"x": np.array([[0.5, 0.5], [2.0, 0.5], [0.5, -1.0]], np.float32)}
    outputs = {"y": feeds["x"].copy()}
    now = time.monotonic()
    telemetry.observe_batch(manifest, "cpu", Batch(3, [now - 0.02, now - 0.01], now, now + 0.005,
                                                   feeds=feeds, outputs=outputs))  # fmt: skip
    telemetry.registry.render()  # per-feature work is deferred to the scrape
    assert telemetry.queue_wait.count(("rec", "1")) == 2
    assert telemetry.inference.count(("rec", "1", "cpu")) == 1
    assert telemetry.batch_rows.count(("rec", "1", "idle")) == 1
    assert telemetry.prediction.count(("rec", "1", "y", "")) == 6
    assert telemetry.out_of_range.value(("rec", "1", "a")) == 1
    assert telemetry.out_of_range.value(("rec", "1", "b")) == 1


def test_a_model_is_announced_live_or_not_and_forgotten_when_unloaded(manifest):
    telemetry = Telemetry()
    key = ("rec", "1", manifest.onnx.sha256, "cpu")
    telemetry.model_loaded(manifest, "cpu", live=False)
    assert telemetry.model_info.value(key) == 0.0
    telemetry.model_loaded(manifest, "cpu", live=True)
    assert telemetry.model_info.value(key) == 1.0
    telemetry.model_unloaded(manifest, "cpu")
    assert "gateway_model_info{" not in telemetry.registry.render()


def test_a_sampled_batch_is_a_span_linked_to_its_requests(manifest):
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(span_exporter=exporter)
    parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    span = telemetry.start_span("POST predict", parent, None)
    assert span is not None
    now = time.monotonic()
    telemetry.observe_batch(manifest, "cpu", Batch(1, [now], now, now + 0.001,
                                                   contexts=[span.get_span_context()]))  # fmt: skip
    batch = next(s for s in exporter.get_finished_spans() if s.name == "batch")
    assert batch.attributes is not None and batch.attributes["model.name"] == "rec"
    assert batch.attributes["inference.provider"] == "cpu" and len(batch.links) == 1


def test_a_response_is_summarised_by_its_labels_or_its_values():
    assert summarize(("label", "p"), {"label": np.array(["cat"])}) == {"labels": {"cat": 1}}
    assert summarize(("label", "p"), {"label": np.array(["a", "b", "a"])}) == {"labels": {"a": 2, "b": 1}}
    assert summarize((None, "y"), {"y": np.array([1.0, 3.0])}) == {"mean": 2.0, "min": 1.0, "max": 3.0}
    assert summarize((None, "y"), {"y": np.array(["text"], dtype=object)}) == {}


def test_the_logged_input_hash_is_the_bodys_sha256():
    assert input_digest(b"{}") == hashlib.sha256(b"{}").hexdigest()
