"""Every instrument the gateway exports, defined once: name, help, labels and buckets.

The alert rules and the dashboard in deploy/ query these names (tests/deploy/
test_monitoring.py checks they exist); `Telemetry` feeds them.
"""

from __future__ import annotations

from gateway.observability.metrics import LATENCY_BUCKETS, ROW_BUCKETS, Counter, Gauge, Histogram, Registry

PREDICTION_BUCKETS = (
    -1e4,
    -1e3,
    -100.0,
    -10.0,
    -1.0,
    0.0,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    1.0,
    10.0,
    100.0,
    1e3,
    1e4,
)
# |shadow - live| per row: the histogram and the admin API's report share these bounds.
DIFF_BUCKETS = (1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 10.0, 100.0)


class Instruments:
    def __init__(self, shared_dir: str | None = None) -> None:
        self.registry = Registry(shared_dir)
        add = self.registry.add
        self.request_duration: Histogram = add(
            Histogram(
                "gateway_request_duration_seconds",
                "Inference request latency, receipt to response.",
                ("model", "version", "route", "code"),
                LATENCY_BUCKETS,
            )
        )
        self.requests: Counter = add(
            Counter(
                "gateway_requests_total",
                "Inference requests answered.",
                ("model", "version", "route", "code"),
            )
        )
        self.rejected: Counter = add(
            Counter(
                "gateway_rejected_total",
                "Requests refused before inference, by reason.",
                ("model", "version", "reason"),
            )
        )
        self.queue_wait: Histogram = add(
            Histogram(
                "gateway_queue_wait_seconds",
                "Time a request waited in its model's queue.",
                ("model", "version"),
                LATENCY_BUCKETS,
            )
        )
        self.inference: Histogram = add(
            Histogram(
                "gateway_inference_duration_seconds",
                "ONNX Runtime time per batch.",
                ("model", "version", "provider"),
                LATENCY_BUCKETS,
            )
        )
        self.batch_rows: Histogram = add(
            Histogram(
                "gateway_batch_rows",
                "Rows per dispatched batch, by dispatch reason.",
                ("model", "version", "reason"),
                ROW_BUCKETS,
            )
        )
        self.prediction: Histogram = add(
            Histogram(
                "gateway_prediction",
                "Predicted class probabilities and values.",
                ("model", "version", "output", "class"),
                PREDICTION_BUCKETS,
            )
        )
        self.out_of_range: Counter = add(
            Counter(
                "gateway_feature_out_of_range_total",
                "Feature values outside the trained range.",
                ("model", "version", "feature"),
            )
        )
        self.unknown_category: Counter = add(
            Counter(
                "gateway_feature_unknown_category_total",
                "Categories the model never saw, accepted where its encoder ignores them.",
                ("model", "version", "feature"),
            )
        )
        self.drift: Gauge = add(
            Gauge(
                "gateway_feature_drift_psi",
                "Population stability index of recent traffic vs the reference.",
                ("model", "version", "feature"),
            )
        )
        self.model_info: Gauge = add(
            Gauge(
                "gateway_model_info",
                "Loaded model versions (1 = live).",
                ("model", "version", "sha256", "provider"),
            )
        )
        self.switches: Counter = add(
            Counter(
                "gateway_model_switches_total",
                "Live-version switches, by result.",
                ("model", "version", "result"),
            )
        )
        self.canary_weight: Gauge = add(
            Gauge(
                "gateway_canary_weight",
                "Percent of a model's requests routed to its canary version.",
                ("model", "version"),
            )
        )
        self.shadow_requests: Counter = add(
            Counter(
                "gateway_shadow_requests_total",
                "Live requests mirrored to a shadow version, by result (mirrored, dropped, failed).",
                ("model", "version", "result"),
            )
        )
        self.shadow_dropped: Counter = add(
            Counter(
                "gateway_shadow_dropped_total",
                "Mirrored requests dropped, by reason (busy, backoff, queue, bytes).",
                ("model", "version", "reason"),
            )
        )
        self.shadow_rows: Counter = add(
            Counter(
                "gateway_shadow_rows_total",
                "Rows a shadow classifier answered, by whether its label agrees with the live one.",
                ("model", "version", "agreement"),
            )
        )
        self.shadow_diff: Histogram = add(
            Histogram(
                "gateway_shadow_abs_diff",
                "Per row, the largest |shadow - live| of the probabilities (classifiers) or values.",
                ("model", "version"),
                DIFF_BUCKETS,
            )
        )
        self.ready: Gauge = add(
            Gauge("gateway_ready", "1 when every live model is loaded and warmed.", (), reduce=min)
        )
        self.background_errors: Counter = add(
            Counter(
                "gateway_background_errors_total",
                "Errors in background tasks (serving.json watcher, metrics publisher).",
                ("task",),
            )
        )
