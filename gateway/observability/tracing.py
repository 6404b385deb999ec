"""Traces: a tracer only when one is configured, and the sampling share from the standard
`OTEL_*` variables. Tracing off costs nothing: no OpenTelemetry object is built."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

lifecycle_log = logging.getLogger("gateway.lifecycle")


def _tracing_configured() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if exporter == "none":
        return False
    return bool(
        exporter == "otlp"
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def root_ratio() -> float:
    """The share of requests without a traceparent to trace, from the standard variables."""
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    if sampler.endswith("always_off"):
        return 0.0
    if sampler.endswith("traceidratio"):
        try:
            return min(1.0, max(0.0, float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))))
        except ValueError:
            return 1.0
    return 1.0


def make_tracer(exporter: SpanExporter | None) -> Tracer | None:
    if exporter is None and not _tracing_configured():
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    # Sampling is decided in Telemetry.start_span (parent-based ratio from OTEL_TRACES_SAMPLER
    # and _ARG); a span that exists is one we keep.
    provider = TracerProvider(
        sampler=ALWAYS_ON,
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "onnx-gateway")}),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            lifecycle_log.warning(
                "an OTLP endpoint is configured but its exporter is not installed: "
                "pip install 'onnx-gateway[otlp]'",
                extra={"event": "tracing_disabled"},
            )
            return None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider.get_tracer("onnx-gateway")


def epoch_ns(monotonic: float) -> int:
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)
