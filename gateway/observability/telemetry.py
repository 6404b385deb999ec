"""Metrics, traces and request logs: the instruments (`observability/instruments.py`), fed
from two places, with plain values only (`observability/facts.py`).

- `observe_request`: once per inference request (latency, status, the access log).
- `observe_batch`: once per batch (queue wait, inference time, batch rows, predictions,
  feature ranges, drift, and the batch span linked to the requests it served).

Tracing is off, and costs nothing, unless an OTLP endpoint is configured through the
standard `OTEL_*` variables (or a span exporter is handed in by a test).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.artifacts.manifest import Manifest
from gateway.artifacts.tabular import columns_from_feeds
from gateway.observability.drift import DriftMonitor
from gateway.observability.facts import BatchFacts, Outcome
from gateway.observability.instruments import Instruments
from gateway.observability.logging import AccessLog
from gateway.observability.metrics import Pending
from gateway.observability.tracing import epoch_ns, make_tracer, root_ratio
from gateway.types import Arrays

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

lifecycle_log = logging.getLogger("gateway.lifecycle")

_REJECTIONS = {
    413: "too_large",
    415: "media_type",
    422: "invalid",
    400: "malformed",
    503: "overloaded",
    504: "deadline",
}
_CODES = {code: str(code) for code in (200, 400, 404, 405, 408, 413, 415, 422, 429, 499, 500, 503, 504)}
SHED_LOG_INTERVAL = 1.0
PENDING_ROWS = 512  # small blocks: the per-feature work stays amortised without a long pause


class Telemetry(Instruments):
    """The instruments, fed: requests, batches and models, told as plain values."""

    def __init__(
        self, shared_dir: str | None = None, span_exporter: SpanExporter | None = None, enabled: bool = True,
        log_format: str = "json",
    ) -> None:  # fmt: skip
        super().__init__(shared_dir)
        self.enabled = enabled
        self.access_log = AccessLog(log_format)
        self._durations = Pending(self.request_duration, self.requests)
        self._waits = Pending(self.queue_wait)
        self.registry.collect_hooks += [self._durations.flush, self._waits.flush, self._collect_drift]
        self._pending: dict[tuple[str, str], tuple[Manifest, list[tuple[Arrays, Arrays]]]] = {}
        self._pending_rows = 0
        self._drift: dict[tuple[str, str], DriftMonitor] = {}
        self.tracer = make_tracer(span_exporter)
        self.root_ratio = root_ratio()
        # A client's sampled traceparent decides only under a parent-based sampler (the
        # default, parentbased_always_on, traces everything anyway); under traceidratio
        # it cannot force tracing beyond the configured share.
        self.parent_based = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").startswith(
            "parentbased_"
        )
        self._shed_count = 0
        self._shed_logged = 0.0

    # -- models ---------------------------------------------------------------------------

    def model_loaded(self, m: Manifest, provider: str, live: bool) -> None:
        self.model_info.set((m.name, m.version, m.onnx.sha256, provider), 1.0 if live else 0.0)
        if (m.name, m.version) not in self._drift:
            monitor = DriftMonitor(m)
            if monitor.enabled:
                self._drift[(m.name, m.version)] = monitor

    def model_unloaded(self, m: Manifest, provider: str) -> None:
        self.model_info.remove((m.name, m.version, m.onnx.sha256, provider))
        self._drift.pop((m.name, m.version), None)

    def _collect_drift(self) -> None:
        self._drain()
        for (name, version), monitor in self._drift.items():
            for feature, value in monitor.values().items():
                self.drift.set((name, version, feature), value)

    # -- requests -------------------------------------------------------------------------

    def start_span(self, name: str, traceparent: bytes | None, tracestate: bytes | None) -> Span | None:
        """A server span, or None when this request is not sampled.

        The parent-based ratio decision is taken here, before any OpenTelemetry object
        exists, so the 99 % of requests that a 1 % sampler drops cost one random number.
        """
        if self.tracer is None:
            return None
        trust_parent = traceparent is not None and self.parent_based
        if not trust_parent and self.root_ratio < 1.0 and random.random() >= self.root_ratio:
            return None
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        if traceparent is None:
            return self.tracer.start_span(name, kind=SpanKind.SERVER)
        carrier = {"traceparent": traceparent.decode("latin-1")}
        if tracestate is not None:
            carrier["tracestate"] = tracestate.decode("latin-1")
        context = extract(carrier)
        from opentelemetry import trace

        parent = trace.get_current_span(context).get_span_context()
        if self.parent_based and parent.is_valid and not parent.trace_flags.sampled:
            return None  # the caller decided not to trace this one
        return self.tracer.start_span(name, context=context, kind=SpanKind.SERVER)

    def observe_request(self, outcome: Outcome, logged: bool) -> None:
        """`logged`: the access log's level, read once when the request began."""
        if self.enabled:
            self._count_request(outcome)
        if logged:
            self._log_request(outcome)

    def _count_request(self, outcome: Outcome) -> None:
        model, version = outcome.model or "", outcome.version or ""
        code = _CODES.get(outcome.status) or str(outcome.status)
        key = (model, version, outcome.route, code)
        self._durations.add(key, outcome.seconds)
        reason = _REJECTIONS.get(outcome.status)
        if reason is not None:
            self.rejected.inc((model, version, reason))
            if outcome.status == 503:
                self._log_shed(outcome)

    def _log_request(self, outcome: Outcome) -> None:
        entry: dict[str, Any] = {
            "event": "request",
            "request_id": outcome.request_id,
            "route": outcome.route,
            "model": outcome.model,
            "version": outcome.version,
            "status": outcome.status,
            # whole microseconds as milliseconds: round(x, 3) costs several times more
            "latency_ms": int(outcome.seconds * 1e6) / 1000,
            "rows": outcome.rows,
        }
        # Spelled out, not a getattr loop: this runs once per request on the event loop.
        if outcome.input_sha256 is not None:
            entry["input_sha256"] = outcome.input_sha256
        if outcome.prediction is not None:
            entry["prediction"] = outcome.prediction
        if outcome.inputs is not None:
            entry["inputs"] = outcome.inputs
        if outcome.error is not None:
            entry["error"] = outcome.error
        if outcome.trace_id is not None:
            entry["trace_id"] = outcome.trace_id
        self.access_log.emit(entry)

    def _log_shed(self, outcome: Outcome) -> None:
        # Shedding comes in floods: one line a second with the count, not one per request.
        self._shed_count += 1
        now = time.monotonic()
        if now - self._shed_logged >= SHED_LOG_INTERVAL:
            lifecycle_log.warning(
                "load shed", extra={"event": "shed", "model": outcome.model, "count": self._shed_count}
            )
            self._shed_count = 0
            self._shed_logged = now

    # -- batches --------------------------------------------------------------------------

    def observe_batch(self, m: Manifest, provider: str, report: BatchFacts) -> None:
        if not self.enabled:
            return
        mv = (m.name, m.version)
        started = report.started
        self._waits.extend(mv, [started - enqueued for enqueued in report.enqueued])
        self.inference.observe((*mv, provider), report.seconds)
        self.batch_rows.observe((*mv, report.reason), report.rows)
        if report.feeds is not None and report.outputs is not None:
            # Per-feature work costs the same for 1 row as for 500: defer it and do it on
            # blocks of rows (at a scrape, or once enough rows are waiting).
            self._pending.setdefault(mv, (m, []))[1].append((report.feeds, report.outputs))
            self._pending_rows += report.rows
            if self._pending_rows >= PENDING_ROWS:
                self._drain()
        if self.tracer is not None:
            self._trace_batch(self.tracer, m, provider, report)

    def _drain(self) -> None:
        pending, self._pending, self._pending_rows = self._pending, {}, 0
        for m, blocks in pending.values():
            feeds = {k: np.concatenate([f[k] for f, _ in blocks]) for k in blocks[0][0]}
            outputs = {k: np.concatenate([o[k] for _, o in blocks]) for k in blocks[0][1]}
            self._observe_predictions(m, outputs)
            if m.features:
                columns = columns_from_feeds(m, feeds)
                self._observe_ranges(m, columns)
                self._observe_unknown(m, columns)
                monitor = self._drift.get((m.name, m.version))
                if monitor is not None:
                    monitor.update(columns)

    def _observe_predictions(self, m: Manifest, outputs: Mapping[str, np.ndarray]) -> None:
        proba = m.output("probabilities")
        if proba is not None:
            values = outputs[proba.name]
            classes = [str(c) for c in m.classes] if m.classes else [str(i) for i in range(values.shape[1])]
            for i, cls in enumerate(classes):
                self.prediction.observe_many((m.name, m.version, proba.name, cls), values[:, i])
            return
        value = m.output("value") or m.outputs[0]
        if value.datatype != "BYTES":
            self.prediction.observe_many((m.name, m.version, value.name, ""), outputs[value.name])

    def _observe_ranges(self, m: Manifest, columns: Mapping[str, np.ndarray]) -> None:
        bounded = [f for f in m.features if f.min is not None and f.max is not None and f.dtype != "string"]
        if not bounded:
            return
        values = np.column_stack([columns[f.name] for f in bounded])
        # Bounds in the values' own float type: a float32 value at a trained bound is inside.
        dtype = np.result_type(values.dtype, np.float32)
        low = np.array([f.min for f in bounded], dtype=dtype)
        high = np.array([f.max for f in bounded], dtype=dtype)
        outside = np.count_nonzero((values < low) | (values > high), axis=0).tolist()
        for feature, count in zip(bounded, outside, strict=True):
            if count:
                self.out_of_range.inc((m.name, m.version, feature.name), count)

    def _observe_unknown(self, m: Manifest, columns: Mapping[str, np.ndarray]) -> None:
        """Counts values outside the categories of features whose encoder ignores them
        ("" is a null on its way in, see gateway.records.codec)."""
        for f in m.features:
            if f.open_categories and f.categories and f.name in columns:
                known = {*f.categories, "", *(c.encode() for c in f.categories), b""}  # V2 sends bytes
                count = sum(1 for v in columns[f.name].tolist() if v not in known)
                if count:
                    self.unknown_category.inc((m.name, m.version, f.name), count)

    def _trace_batch(self, tracer: Tracer, m: Manifest, provider: str, report: BatchFacts) -> None:
        # Only sampled requests carry a span context (start_span returns None otherwise).
        sampled: list[tuple[Any, float]] = [
            (c, enq) for c, enq in zip(report.contexts, report.enqueued, strict=True) if c is not None
        ]
        if not sampled:
            return
        from opentelemetry import trace
        from opentelemetry.trace import Link, NonRecordingSpan

        started, finished = epoch_ns(report.started), epoch_ns(report.finished)
        for context, enqueued in sampled:
            parent = trace.set_span_in_context(NonRecordingSpan(context))
            tracer.start_span("queue_wait", context=parent, start_time=epoch_ns(enqueued)).end(
                end_time=started
            )
        # The batch is a child of its first sampled request and linked to all of them, so a
        # parent-based sampler keeps it exactly when it keeps one of its requests.
        batch = tracer.start_span(
            "batch",
            context=trace.set_span_in_context(NonRecordingSpan(sampled[0][0])),
            links=[Link(c) for c, _ in sampled],
            start_time=started,
            attributes={
                "batch.rows": report.rows,
                "batch.requests": report.requests,
                "batch.dispatch_reason": report.reason,
                "batch.failed": report.failed,
                "model.name": m.name,
                "model.version": m.version,
                "inference.provider": provider,
            },
        )
        batch.end(end_time=finished)


def summarize(summary_outputs: tuple[str | None, str], outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A few numbers that describe a response, for the access log: `summary_outputs` names
    the model's label output (if any) and its value output."""
    label, value_output = summary_outputs
    if label is not None:
        labels = outputs[label]
        if labels.size == 1:  # the common case, without np.unique's sort (item: no numpy scalar)
            return _one_label(labels.item(0))
        values, counts = np.unique(labels, return_counts=True)
        return {"labels": {str(v): int(n) for v, n in zip(values[:10], counts[:10], strict=False)}}
    data = outputs[value_output]
    if data.dtype.kind not in "fiub" or data.size == 0:
        return {}
    if data.size == 1:
        value = float(data.item(0))
        return {"mean": value, "min": value, "max": value}
    return {"mean": float(data.mean()), "min": float(data.min()), "max": float(data.max())}


@functools.lru_cache(maxsize=1024, typed=True)
def _one_label(value: Any) -> dict[str, Any]:
    """One row's summary, built once per class: the log writer only reads it."""
    return {"labels": {str(value): 1}}


def input_digest(body: bytes) -> str:
    """Logs carry this hash, not the inputs, unless raw input logging is switched on."""
    # sha256 as the field says (a client can sha256sum what it sent); with the CPU's SHA
    # instructions it is also faster than blake2b here (193 KB: 110 µs against 217 µs).
    return hashlib.sha256(body).hexdigest()
