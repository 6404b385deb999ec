"""Plain ONNX models nobody here converted, as Triton's own protocol tests bring them:
without a batch dimension, scalar and shapeless inputs, every V2 datatype, strings the
graph parses, zero-element tensors, several inputs and outputs. Each is converted with
`gateway convert` as given, served by one real `gateway serve` (HTTP and gRPC), and
answers what in-process ONNX Runtime answers on the same file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from tritonclient.utils import InferenceServerException

from converters import convert
from converters.errors import ConversionError
from tests.conftest import free_port, start_server

OPSET = [helper.make_opsetid("", 17)]
# V2 datatype -> (ONNX element type, numpy dtype)
DTYPES: dict[str, tuple[int, Any]] = {
    "BOOL": (T.BOOL, np.bool_), "UINT8": (T.UINT8, np.uint8), "UINT16": (T.UINT16, np.uint16),
    "UINT32": (T.UINT32, np.uint32), "UINT64": (T.UINT64, np.uint64), "INT8": (T.INT8, np.int8),
    "INT16": (T.INT16, np.int16), "INT32": (T.INT32, np.int32), "INT64": (T.INT64, np.int64),
    "FP16": (T.FLOAT16, np.float16), "FP32": (T.FLOAT, np.float32), "FP64": (T.DOUBLE, np.float64),
}  # fmt: skip


def _vi(name: str, elem: int, shape: list[Any] | None) -> Any:
    return helper.make_tensor_value_info(name, elem, shape)


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list | None = None) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits or [])
    onnx.save(helper.make_model(graph, opset_imports=OPSET, ir_version=8), str(path))
    return path


def build_models(tmp: Path) -> dict[str, Path]:
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    weights = numpy_helper.from_array(np.arange(48, dtype=np.float32).reshape(16, 3) / 10, "w")
    return {
        # Triton's max_batch_size 0: inputs like [16]
        "nobatch": _save(tmp / "nobatch.onnx", [helper.make_node("Mul", ["x", "two"], ["y"])],
                         [_vi("x", T.FLOAT, [16])], [_vi("y", T.FLOAT, [16])], [two]),
        "scalar": _save(tmp / "scalar.onnx", [helper.make_node("Mul", ["x", "two"], ["y"])],
                        [_vi("x", T.FLOAT, [])], [_vi("y", T.FLOAT, [])], [two]),
        # No shape at all: onnx.checker refuses it, ONNX Runtime runs it
        "shapeless": _save(tmp / "shapeless.onnx", [helper.make_node("Mul", ["x", "two"], ["y"])],
                           [_vi("x", T.FLOAT, None)], [_vi("y", T.FLOAT, None)], [two]),
        "dtypes": _save(
            tmp / "dtypes.onnx",
            [helper.make_node("Identity", [f"in_{d}"], [f"out_{d}"]) for d in DTYPES],
            [_vi(f"in_{d}", e, ["N", 3]) for d, (e, _) in DTYPES.items()],
            [_vi(f"out_{d}", e, ["N", 3]) for d, (e, _) in DTYPES.items()],
        ),
        "parses": _save(tmp / "parses.onnx", [helper.make_node("Cast", ["text"], ["value"], to=T.FLOAT)],
                        [_vi("text", T.STRING, ["N", 2])], [_vi("value", T.FLOAT, ["N", 2])]),
        "matmul": _save(tmp / "matmul.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                        [_vi("x", T.FLOAT, ["N", 16])], [_vi("y", T.FLOAT, ["N", 3])], [weights]),
        # BF16 in and out, and widened to FP32 by the graph
        "bf16": _save(tmp / "bf16.onnx", [helper.make_node("Identity", ["x"], ["same"]),
                                          helper.make_node("Cast", ["x"], ["wide"], to=T.FLOAT)],
                      [_vi("x", T.BFLOAT16, ["N", 4])],
                      [_vi("same", T.BFLOAT16, ["N", 4]), _vi("wide", T.FLOAT, ["N", 4])]),
        "ragged": _save(tmp / "ragged.onnx", [helper.make_node("Mul", ["x", "two"], ["y"])],
                        [_vi("x", T.FLOAT, ["N", "S"])], [_vi("y", T.FLOAT, ["N", "S"])], [two]),
    }  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("as_given")
    repo = tmp / "repo"
    models = build_models(tmp)
    for name, path in models.items():
        convert(path, name=name, version="1", repo=repo)
    convert(models["scalar"], name="broken", version="1", repo=repo)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")  # fails its sha256: not loaded
    port = free_port()
    srv = start_server(repo, tmp, "--grpc-port", str(port), "--max-batch-rows", "8", wait_ready=False)
    srv.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{srv.url}/v2/models/ragged/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        srv.stop()
        raise RuntimeError(srv.log())
    yield (
        srv,
        {n: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for n, p in models.items()},
    )
    srv.stop()


def _json_data(array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    return [str(v) for v in flat] if flat.dtype == object else flat.tolist()


def v2_json(
    srv: Any, model: str, feeds: dict[str, np.ndarray], datatypes: dict[str, str]
) -> dict[str, np.ndarray]:
    body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": datatypes[n], "data": _json_data(a)}
                       for n, a in feeds.items()]}  # fmt: skip
    response = httpx.post(f"{srv.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def v2_grpc(
    srv: Any, model: str, feeds: dict[str, np.ndarray], datatypes: dict[str, str]
) -> dict[str, np.ndarray]:
    client = tc.InferenceServerClient(srv.grpc)
    inputs = []
    for name, array in feeds.items():
        tensor = tc.InferInput(name, list(array.shape), datatypes[name])
        tensor.set_data_from_numpy(array.astype(np.object_) if datatypes[name] == "BYTES" else array)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name].astype(np.float64), value.astype(np.float64), err_msg=name)


def both_protocols(
    srv: Any, session: Any, model: str, feeds: dict[str, np.ndarray], datatypes: dict[str, str]
):
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    assert_same(v2_json(srv, model, feeds, datatypes), want)
    assert_same(v2_grpc(srv, model, feeds, datatypes), want)


def test_model_without_batch_dimension(served):
    srv, sessions = served
    x = np.linspace(-1, 1, 16, dtype=np.float32)
    both_protocols(srv, sessions["nobatch"], "nobatch", {"x": x}, {"x": "FP32"})
    config = httpx.get(f"{srv.url}/v2/models/nobatch/config").json()
    assert config["max_batch_size"] == 0 and config["input"][0]["dims"] == [16]
    assert "dynamic_batching" not in config
    assert httpx.get(f"{srv.url}/v2/models/matmul/config").json()["max_batch_size"] == 8
    wrong = httpx.post(f"{srv.url}/v2/models/nobatch/infer",
                       json={"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}]})  # fmt: skip
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "inputs", 0, "shape"]


def test_scalar_and_shapeless_inputs(served):
    srv, sessions = served
    both_protocols(srv, sessions["scalar"], "scalar", {"x": np.array(1.25, np.float32)}, {"x": "FP32"})
    for shape in [(), (5,), (2, 3), (1, 2, 2)]:
        x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        both_protocols(srv, sessions["shapeless"], "shapeless", {"x": x}, {"x": "FP32"})


def test_every_datatype_several_inputs_and_outputs(served):
    srv, sessions = served
    rng = np.random.default_rng(0)
    feeds = {f"in_{d}": (rng.integers(0, 2, (4, 3)) if d == "BOOL" else rng.integers(0, 100, (4, 3))).astype(t)
             for d, (_, t) in DTYPES.items()}  # fmt: skip
    feeds["in_FP16"] = (rng.normal(size=(4, 3)) * 10).astype(np.float16)
    both_protocols(srv, sessions["dtypes"], "dtypes", feeds, {f"in_{d}": d for d in DTYPES})
    metadata = httpx.get(f"{srv.url}/v2/models/dtypes").json()
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {f"out_{d}": d for d in DTYPES}


def test_bytes_input_the_graph_parses(served):
    srv, sessions = served
    text = np.array([["1.5", "-2"], ["0", "1e3"]], dtype=object)
    both_protocols(srv, sessions["parses"], "parses", {"text": text}, {"text": "BYTES"})


def test_zero_element_tensors(served):
    srv, sessions = served
    both_protocols(srv, sessions["matmul"], "matmul", {"x": np.zeros((0, 16), np.float32)}, {"x": "FP32"})
    both_protocols(srv, sessions["ragged"], "ragged", {"x": np.zeros((1, 0), np.float32)}, {"x": "FP32"})
    both_protocols(srv, sessions["ragged"], "ragged", {"x": np.zeros((0, 5), np.float32)}, {"x": "FP32"})


def test_dynamic_non_batch_dimensions(served):
    srv, sessions = served
    for width in (1, 4, 9):
        x = np.arange(2 * width, dtype=np.float32).reshape(2, width)
        both_protocols(srv, sessions["ragged"], "ragged", {"x": x}, {"x": "FP32"})


def test_a_model_that_fails_to_load_leaves_the_v2_server_ready(served):
    """Triton's rule for the V2 server check (clients of the models that work keep a ready
    server); /readyz, the orchestrator's probe, keeps its own: every model must serve."""
    srv, _ = served
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200
    assert tc.InferenceServerClient(srv.grpc).is_server_ready()
    readyz = httpx.get(f"{srv.url}/readyz")
    assert readyz.status_code == 503 and readyz.json()["not_served"] == ["broken"]
    assert httpx.get(f"{srv.url}/v2/models/broken/ready").status_code != 200
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        tc.InferenceServerClient(srv.grpc).is_model_ready("broken")


def test_bf16_tensors(served):
    """BF16 has no numpy type: JSON carries floats (rounded to bfloat16 as torch rounds),
    the binary and gRPC raw layouts carry the 16-bit patterns (tritonclient's ml_dtypes)."""
    srv, _ = served
    exact = np.array([[1.5, -2.0, 0.25, 2.0**127], [0.0, -0.0, 1.0, 65280.0]], np.float32)
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "BF16", "data": exact.ravel().tolist()}]}
    outputs = httpx.post(f"{srv.url}/v2/models/bf16/infer", json=body).json()["outputs"]
    assert [o["datatype"] for o in outputs] == ["BF16", "FP32"]
    for o in outputs:
        np.testing.assert_array_equal(np.array(o["data"], np.float32).reshape(2, 4), exact)
    rounded = httpx.post(f"{srv.url}/v2/models/bf16/infer", json={
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "BF16", "data": [1.00390625, 1.01171875, 0.1, -3.3]}]
    }).json()["outputs"]  # fmt: skip
    want = np.array([1.0, 1.015625, 0.10009765625, -3.296875], np.float32)  # torch.bfloat16's rounding
    for o in rounded:
        np.testing.assert_array_equal(np.array(o["data"], np.float32).ravel(), want)
    tensor = tc.InferInput("x", [2, 4], "BF16")
    tensor.set_data_from_numpy(exact.astype(ml_dtypes.bfloat16))  # raw: the 16-bit patterns
    result = tc.InferenceServerClient(srv.grpc).infer("bf16", [tensor])
    np.testing.assert_array_equal(result.as_numpy("same").astype(np.float32), exact)
    np.testing.assert_array_equal(result.as_numpy("wide"), exact)
    infinite = httpx.post(f"{srv.url}/v2/models/bf16/infer", json={
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "BF16", "data": [1, 2, 3, 1e39]}]
    })  # fmt: skip
    assert infinite.status_code == 422 and infinite.json()["detail"][0]["loc"] == [
        "body",
        "inputs",
        0,
        "data",
    ]


def test_unsupported_element_types_are_refused_by_name(tmp_path):
    """Not as "maps and sequences": the element type, and what the gateway serves."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "f8",
                              [_vi("x", T.FLOAT8E4M3FN, ["N", 4])], [_vi("y", T.FLOAT8E4M3FN, ["N", 4])])  # fmt: skip
    path = tmp_path / "f8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    with pytest.raises(ConversionError, match="holds FLOAT8E4M3FN elements") as caught:
        convert(path, name="f8", version="1", repo=tmp_path / "repo")
    assert "maps and sequences" not in str(caught.value) and "BF16" in str(caught.value)


def test_a_graph_onnx_runtime_cannot_load_is_refused_at_convert(tmp_path):
    path = _save(tmp_path / "bad.onnx", [helper.make_node("NoSuchOp", ["x"], ["y"])],
                 [_vi("x", T.FLOAT, ["N", 4])], [_vi("y", T.FLOAT, ["N", 4])])  # fmt: skip
    with pytest.raises(ConversionError, match="ONNX Runtime cannot load this model"):
        convert(path, name="bad", version="1", repo=tmp_path / "repo")
