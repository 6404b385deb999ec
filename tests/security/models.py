"""Small ONNX models built here (no training, no converter) and published with their
manifests, for the hardening tests: a string echo, a float identity, one that would read
a file through external data."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from gateway.artifacts.manifest import Feature, Manifest, OnnxInfo, Source, TensorSpec
from gateway.artifacts.repository import Repository, sha256_bytes

OPSET = [helper.make_opsetid("", 17)]


def _model(graph) -> bytes:
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8).SerializeToString()


def echo_strings() -> bytes:
    """text BYTES [-1, 1] -> echo BYTES [-1, 1]."""
    text = helper.make_tensor_value_info("text", TensorProto.STRING, [None, 1])
    echo = helper.make_tensor_value_info("echo", TensorProto.STRING, [None, 1])
    return _model(
        helper.make_graph([helper.make_node("Identity", ["text"], ["echo"])], "echo", [text], [echo])
    )


def float_identity(width: int = 4) -> bytes:
    """x FP32 [-1, width] -> y FP32 [-1, width]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])
    return _model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y]))


def reads_external(location: str, length: int = 16) -> bytes:
    """x FP32 [-1, 1] -> y UINT8 [length]: y is `length` bytes read from `location`."""
    leak = numpy_helper.from_array(np.zeros(length, np.uint8), "leak")
    leak.ClearField("raw_data")
    leak.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = leak.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [length])
    graph = helper.make_graph([helper.make_node("Identity", ["leak"], ["y"])], "leak", [x], [y], [leak])
    return _model(graph)


def publish(
    repo: Path,
    name: str,
    version: str,
    model: bytes,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    features: list[Feature] | None = None,
) -> Manifest:
    manifest = Manifest(
        name=name,
        version=version,
        created_at="2026-01-01T00:00:00+00:00",
        task="other",
        layout="matrix" if features else "tensors",
        source=Source(
            framework="onnx",
            framework_version="1",
            estimator="graph",
            file_name="m.onnx",
            file_sha256=sha256_bytes(model),
        ),
        onnx=OnnxInfo(
            sha256=sha256_bytes(model), size=len(model), opset={"ai.onnx": 17}, producer="test", ir_version=8
        ),
        inputs=inputs,
        outputs=outputs,
        features=features or [],
    )
    Repository(repo).publish(manifest, model)
    return manifest


def publish_echo(repo: Path, name: str = "echo", version: str = "1") -> Manifest:
    return publish(
        repo, name, version, echo_strings(),
        [TensorSpec(name="text", datatype="BYTES", shape=[-1, 1])],
        [TensorSpec(name="echo", datatype="BYTES", shape=[-1, 1], role="other")],
    )  # fmt: skip


def publish_identity(repo: Path, name: str = "ident", version: str = "1", width: int = 4) -> Manifest:
    return publish(
        repo, name, version, float_identity(width),
        [TensorSpec(name="x", datatype="FP32", shape=[-1, width])],
        [TensorSpec(name="y", datatype="FP32", shape=[-1, width], role="value")],
    )  # fmt: skip


def publish_records(
    repo: Path, name: str = "rec", version: str = "1", features: tuple[str, ...] = ("a", "b")
) -> Manifest:
    """A float identity with one named float32 feature per column: the records API's model."""
    width = len(features)
    return publish(
        repo, name, version, float_identity(width),
        [TensorSpec(name="x", datatype="FP32", shape=[-1, width])],
        [TensorSpec(name="y", datatype="FP32", shape=[-1, width], role="value")],
        features=[Feature(name=f, dtype="float32") for f in features],
    )  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def bytes_tensor(values: list[bytes]) -> bytes:
    """The binary extension's BYTES layout: a 4-byte little-endian length, then the bytes."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def float_identity_any() -> bytes:
    """x FP32 [-1, -1] -> y FP32 [-1, -1]: no per-model byte bound applies."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])
    return _model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "any", [x], [y]))


def float_add() -> bytes:
    """a, b FP32 [-1, -1] -> s = a + b: inputs each valid that may not broadcast together."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, None])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, None])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [None, None])
    return _model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["s"])], "add", [a, b], [s]))


def publish_identity_any(repo: Path, name: str = "var", version: str = "1") -> Manifest:
    return publish(
        repo, name, version, float_identity_any(),
        [TensorSpec(name="x", datatype="FP32", shape=[-1, -1])],
        [TensorSpec(name="y", datatype="FP32", shape=[-1, -1], role="value")],
    )  # fmt: skip


def publish_add(repo: Path, name: str = "add2", version: str = "1") -> Manifest:
    return publish(
        repo, name, version, float_add(),
        [TensorSpec(name="a", datatype="FP32", shape=[-1, -1]), TensorSpec(name="b", datatype="FP32", shape=[-1, -1])],
        [TensorSpec(name="s", datatype="FP32", shape=[-1, -1], role="value")],
    )  # fmt: skip


def reset_peak_rss(pid: int) -> None:
    """Start the process's peak RSS (VmHWM) again from its current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")
