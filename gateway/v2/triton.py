"""Triton's model configuration and statistics extensions, in Triton's JSON shapes.

perf_analyzer and Triton's clients read both: the configuration to build requests (batch
dimension, input dims, dynamic batching), the statistics to report what the server itself
measured. The statistics are counters added to on the request path and per batch, never
computed from a log or a histogram: a request costs a few integer additions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.artifacts.manifest import Manifest, TensorSpec

if TYPE_CHECKING:
    from gateway.batching import BatchReport


@dataclass(slots=True)
class _Duration:
    """Triton's StatisticDuration: how many, and their total nanoseconds."""

    count: int = 0
    ns: int = 0

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class _BatchSize:
    """Executions of one batch size: each phase's count is the executions'."""

    count: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclass(slots=True)
class ModelStats:
    """What one loaded model version did, in the terms of Triton's statistics extension.

    Per request (the endpoint, when it answers): success or fail, with the whole time from
    receipt to answer. Per batch (the batcher, as it delivers): each request's queue time,
    and the batch's three phases, which every request in it shares, as Triton counts them:
    compute_input joins the requests' inputs, compute_infer runs the model, compute_output
    slices the outputs back. The three compute counts move together (perf_analyzer checks
    that they agree). Decoding and encoding the HTTP bodies is neither: like Triton's
    front-end work, it is the overhead that success minus queue minus compute leaves.
    Only the event loop writes these, so no lock is needed.
    """

    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, _BatchSize] = field(default_factory=dict)

    def request(self, ok: bool, total_ns: int) -> None:
        outcome = self.success if ok else self.fail
        outcome.count += 1
        outcome.ns += total_ns

    def batch(self, report: BatchReport) -> None:
        # Runs once per batch on the event loop: plain additions, no per-request loop
        # beyond the one sum, no method calls.
        n = report.requests
        input_ns = int(report.input_seconds * 1e9)
        infer_ns = int(report.infer_seconds * 1e9)
        output_ns = int(report.output_seconds * 1e9)
        queue, c_in, c_infer, c_out = self.queue, self.compute_input, self.compute_infer, self.compute_output
        queue.count += n
        queue.ns += int((report.started * n - sum(report.enqueued)) * 1e9)
        c_in.count += n
        c_in.ns += input_ns * n
        c_infer.count += n
        c_infer.ns += infer_ns * n
        c_out.count += n
        c_out.ns += output_ns * n
        self.execution_count += 1
        if not report.failed:
            self.inference_count += report.rows
        self.last_inference_ms = time.time_ns() // 1_000_000
        size = self.batches.get(report.rows)
        if size is None:
            size = self.batches[report.rows] = _BatchSize()
        size.count += 1
        size.input_ns += input_ns
        size.infer_ns += infer_ns
        size.output_ns += output_ns

    def json(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.json(),
                "fail": self.fail.json(),
                "queue": self.queue.json(),
                "compute_input": self.compute_input.json(),
                "compute_infer": self.compute_infer.json(),
                "compute_output": self.compute_output.json(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": rows,
                    "compute_input": {"count": s.count, "ns": s.input_ns},
                    "compute_infer": {"count": s.count, "ns": s.infer_ns},
                    "compute_output": {"count": s.count, "ns": s.output_ns},
                }
                for rows, s in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


def _label_filename(manifest: Manifest, output: str) -> str:
    """The labels file given at convert for this output (`--labels OUTPUT=file`), by the
    name it had, as Triton names the file beside its model; "" for an output without."""
    if output not in manifest.labels:
        return ""
    given = manifest.metadata.get("label_files", {}).get(output, {})
    name = given.get("file") if isinstance(given, dict) else None
    return name if isinstance(name, str) and name else f"{output}_labels.txt"


def _tensor(spec: TensorSpec, output: bool, batched: bool, label_filename: str = "") -> dict[str, Any]:
    """Dims without the batch dimension; a tensor that is only the batch dimension is
    Triton's [1] reshaped to [], as Triton's own auto-complete writes it for ONNX."""
    dims = spec.shape[1:] if batched else spec.shape
    entry: dict[str, Any] = {
        "name": spec.name,
        "data_type": f"TYPE_{'STRING' if spec.datatype == 'BYTES' else spec.datatype}",
        "dims": dims or [1],
        "is_shape_tensor": False,
    }
    if not dims:
        entry["reshape"] = {"shape": []}
    if spec.reshape is not None:  # given at convert: the graph's own dims
        entry["reshape"] = {"shape": spec.reshape[1:] if batched else spec.reshape}
    if output:
        entry["label_filename"] = label_filename
    else:
        entry |= {"format": "FORMAT_NONE", "allow_ragged_batch": False, "optional": False}
    return entry


@dataclass(frozen=True, slots=True)
class Scheduling:
    """The batcher settings a model runs with, as the configuration reports them."""

    max_batch_rows: int
    max_delay_s: float
    max_queue_rows: int
    lanes: int
    timeout_ms: float
    provider: str


def model_config(manifest: Manifest, versions: list[str], scheduling: Scheduling) -> dict[str, Any]:
    """Triton's model configuration (model_config.proto) as its HTTP endpoint writes it."""
    batched = manifest.batched  # the batcher's rule: runs alone, max_batch_size 0
    config: dict[str, Any] = {
        "name": manifest.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "runtime": "",
        # Versions are loaded explicitly (serving.json, the admin API), not by a policy:
        # "specific" with the loaded ones is what a client can ask for.
        "version_policy": {"specific": {"versions": versions}},
        "max_batch_size": scheduling.max_batch_rows if batched else 0,
        "input": [_tensor(s, False, batched) for s in manifest.inputs],
        "output": [_tensor(s, True, batched, _label_filename(manifest, s.name)) for s in manifest.outputs],
        "batch_input": [],
        "batch_output": [],
        "instance_group": [
            {
                "name": manifest.name,
                "kind": "KIND_GPU" if scheduling.provider == "cuda" else "KIND_CPU",
                "count": scheduling.lanes,
                "gpus": [],
                "secondary_devices": [],
                "profile": [],
                "passive": False,
                "host_policy": "",
            }
        ],
        "default_model_filename": "model.onnx",
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {},
        "model_warmup": [],
    }
    if batched:  # Triton leaves the scheduler out of an unbatched model's configuration
        config["dynamic_batching"] = {
            # Ours takes whatever waits, up to max_batch_size rows: no preferred sizes.
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": round(scheduling.max_delay_s * 1e6),
            "preserve_ordering": False,
            "priority_levels": 0,
            "default_priority_level": 0,
            "priority_queue_policy": {},
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(scheduling.timeout_ms * 1000),
                "allow_timeout_override": True,
                # Ours counts rows, not requests (a request of many rows weighs more).
                "max_queue_size": scheduling.max_queue_rows,
            },
        }
    return config
