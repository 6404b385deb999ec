"""The warm-up policy: values from the manifest where it has them, made-up ones of the
graph's own types and shapes otherwise; a graph that refuses made-up values is served
unwarmed, never unloadable; one model failing to load leaves the V2 server ready."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converters import convert
from gateway.artifacts.manifest import Feature, Manifest, OnnxInfo, Source, TensorSpec
from gateway.artifacts.repository import Repository
from gateway.lifecycle.registry import ModelRegistry
from gateway.lifecycle.warmup import warm_up, warmup_feeds
from gateway.observability.telemetry import Telemetry
from gateway.runtime import ModelLoadError
from gateway.settings import build_settings
from gateway.testing import FakeRuntime


def manifest(inputs: list[TensorSpec], features: list[Feature] | None = None) -> Manifest:
    return Manifest(
        name="m", version="1", created_at="2026-01-01T00:00:00+00:00", task="other",
        layout="matrix" if features else "tensors",
        source=Source(framework="onnx", framework_version="1", estimator="g", file_name="m.onnx", file_sha256="0"),
        onnx=OnnxInfo(sha256="0", size=0, opset={}, producer="", ir_version=8),
        inputs=inputs, outputs=[TensorSpec("y", "FP32", [-1, 1])], features=features or [],
    )  # fmt: skip


def test_made_up_values_follow_the_graphs_types_and_shapes():
    batched = manifest([TensorSpec("x", "FP16", [-1, 3, -1]), TensorSpec("s", "BYTES", [-1, 2])])
    feeds = warmup_feeds(batched, 4)
    assert feeds["x"].shape == (4, 3, 1) and feeds["x"].dtype == np.float16 and not feeds["x"].any()
    # "0", not "": a graph that parses its strings as numbers accepts it
    assert feeds["s"].shape == (4, 2) and feeds["s"].dtype == object and set(feeds["s"].ravel()) == {"0"}
    unbatched = manifest([TensorSpec("x", "INT8", [16]), TensorSpec("k", "BOOL", []),
                          TensorSpec("any", "UINT64", [], any_shape=True)])  # fmt: skip
    feeds = warmup_feeds(unbatched, 4)  # no batch dimension: no rows either
    assert {n: (a.shape, a.dtype.name) for n, a in feeds.items()} == {
        "x": ((16,), "int8"),
        "k": ((), "bool"),
        "any": ((), "uint64"),
    }


def test_a_reshaped_input_is_made_up_in_the_graphs_own_shape():
    """Triton's reshape: clients send 4 x 4, the graph takes 16, and so does warm-up."""
    feeds = warmup_feeds(manifest([TensorSpec("x", "FP32", [-1, 4, 4], reshape=[-1, 16])]), 2)
    assert feeds["x"].shape == (2, 16)


class Recording(FakeRuntime):
    def __init__(self, fails_at: int | None = None) -> None:
        super().__init__()
        self.fails_at = fails_at
        self.seen: list[tuple[int, ...]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        self.seen.append(x.shape)
        if self.fails_at is not None and x.shape[:1] == (self.fails_at,):
            raise RuntimeError("Reshape: cannot reshape [2,3] to {0,0,0}\n at /src/onnxruntime/reshape.cc")
        return super().run(feeds)


def test_every_batch_size_is_warmed_twice_and_timed():
    runtime = Recording()
    inline = warm_up(runtime, manifest([TensorSpec("x", "FP32", [-1, 3])]), 6, inline_budget_s=10.0)
    assert [s[0] for s in runtime.seen] == [1, 1, 2, 2, 4, 4, 6, 6]
    assert inline == 6  # everything within a 10 s budget
    assert warm_up(Recording(), manifest([TensorSpec("x", "FP32", [-1, 3])]), 6, inline_budget_s=0.0) == 0


def test_a_model_without_batch_dimension_is_warmed_once_whole():
    runtime = Recording()
    warm_up(runtime, manifest([TensorSpec("x", "FP32", [16])]), 256, inline_budget_s=1.0)
    assert runtime.seen == [(16,), (16,)]


def test_made_up_values_the_graph_refuses_leave_the_model_unwarmed_not_refused(caplog):
    runtime = Recording(fails_at=2)
    with caplog.at_level(logging.WARNING, logger="gateway.warmup"):
        inline = warm_up(runtime, manifest([TensorSpec("x", "FP32", [-1, 3])]), 8, inline_budget_s=10.0)
    assert inline == 0  # costs unknown: nothing runs on the event loop
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "warmup_skipped"]
    assert record.model == "m" and record.rows == 2 and "Reshape" in record.error
    assert "\n" not in record.error and "/src/" not in record.error


def test_the_manifests_own_sample_failing_is_a_broken_model():
    tabular = manifest([TensorSpec("x", "FP32", [-1, 2])], [Feature("a", "float32"), Feature("b", "float32")])
    with pytest.raises(ModelLoadError, match="warm-up at 1 rows failed: Reshape"):
        warm_up(Recording(fails_at=1), tabular, 8, inline_budget_s=1.0)


# -- through the registry: real ONNX Runtime sessions, no sockets ---------------------------

OPSET = [helper.make_opsetid("", 17)]


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list | None = None) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits or [])
    onnx.save(helper.make_model(graph, opset_imports=OPSET, ir_version=8), str(path))
    return path


def parses_strings(path: Path) -> Path:
    """BYTES [-1, 2] cast to FP32 by the graph: "" fails, as Triton's tests feed it."""
    return _save(path, [helper.make_node("Cast", ["text"], ["value"], to=TensorProto.FLOAT)],
                 [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 2])],
                 [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 2])])  # fmt: skip


def reshapes_by_input(path: Path) -> Path:
    """x FP32 [6] reshaped to the shape the request gives: zeros are no shape for 6 values."""
    return _save(path, [helper.make_node("Reshape", ["x", "shape"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]),
                  helper.make_tensor_value_info("shape", TensorProto.INT64, [3])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])  # fmt: skip


@pytest.mark.asyncio
async def test_registry_serves_what_loads_and_the_v2_server_stays_ready(tmp_path, caplog):
    repo = tmp_path / "repo"
    convert(parses_strings(tmp_path / "parses.onnx"), name="parses", version="1", repo=repo)
    convert(reshapes_by_input(tmp_path / "reshape.onnx"), name="reshape", version="1", repo=repo)
    convert(parses_strings(tmp_path / "broken.onnx"), name="broken", version="1", repo=repo)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")  # its sha256 no longer matches
    settings = build_settings({"repo": str(repo), "max_batch_rows": 4, "poll_seconds": 0}, environ={})
    registry = ModelRegistry(settings, Repository(repo), telemetry=Telemetry(enabled=False))
    with caplog.at_level(logging.WARNING, logger="gateway.warmup"):
        await registry.load_repository()
    try:
        assert registry.live == {"parses": "1", "reshape": "1"}
        skipped = [r.model for r in caplog.records if getattr(r, "event", None) == "warmup_skipped"]
        assert skipped == ["reshape"]
        # Triton's rule for the V2 server check; /readyz keeps the orchestrator's stricter one.
        assert registry.server_ready() and not registry.all_ready()
        assert registry.readiness()["not_served"] == ["broken"]
        parses = registry.get("parses")
        assert parses.batcher.batched and parses.batcher.inline_rows >= 0
        out = await parses.batcher.submit({"text": np.array([["1.5", "-2"]], dtype=object)}, 1, 1e12)
        np.testing.assert_array_equal(out["value"], [[1.5, -2.0]])
        reshape = registry.get("reshape")
        assert not reshape.batcher.batched and reshape.batcher.inline_rows == 0
        feeds = {"x": np.arange(6, dtype=np.float32), "shape": np.array([3, 1, 2])}
        out = await reshape.batcher.submit(feeds, 1, 1e12)
        np.testing.assert_array_equal(out["y"], np.arange(6, dtype=np.float32).reshape(3, 1, 2))
    finally:
        await registry.close()
