"""Deep-learning models as teams bring them: built with torch here, exported with
torch.onnx.export (dynamic batch and non-batch axes), converted with `gateway convert` as
given, served, and compared with torch over HTTP V2 binary tensors and gRPC, with requests
of mixed shapes in flight at once: each shape is batched with its own kind."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as tc_aio
from tritonclient.grpc import InferInput

from tests.conftest import ROOT, free_port, start_server

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

D_MODEL = 16


def cnn() -> Any:
    """Two conv layers on images of any size: the feature map and its global average."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, image: Any) -> tuple[Any, Any]:
            features = self.conv2(torch.relu(self.conv1(image)))
            return features, features.mean(dim=(2, 3))

    return Net()


def encoder() -> Any:
    layer = torch.nn.TransformerEncoderLayer(D_MODEL, nhead=2, dim_feedforward=32, batch_first=True)
    return torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


def export(module: Any, example: Any, path: Path, names: tuple[list[str], list[str]], axes: dict) -> Path:
    """The legacy (TorchScript) exporter, which needs nothing beyond torch."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(module, (example,), str(path), input_names=names[0], output_names=names[1],
                          dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
    return path


def export_dynamo(
    module: Any, example: Any, path: Path, names: tuple[list[str], list[str]], axes: dict
) -> Path:
    """The dynamo exporter (it needs onnxscript). The legacy one traces nn.MultiheadAttention
    with the example's sequence length baked into a Reshape: any other length fails."""
    module.eval()
    dims = {i: torch.export.Dim(name) for i, name in axes[names[0][0]].items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=names[0], output_names=names[1],
                          dynamic_shapes=(dims,), dynamo=True)  # fmt: skip
    return path


def gateway_convert(path: Path, name: str, repo: Path) -> None:
    subprocess.run([sys.executable, "-m", "gateway.cli", "convert", str(path), "--name", name,
                    "--version", "1", "--repo", str(repo)], check=True, cwd=ROOT, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("exported")
    repo = tmp / "repo"
    image_axes = {"image": {0: "batch", 2: "height", 3: "width"},
                  "features": {0: "batch", 2: "height", 3: "width"}, "pooled": {0: "batch"}}  # fmt: skip
    seq_axes = {"tokens": {0: "batch", 1: "sequence"}, "encoded": {0: "batch", 1: "sequence"}}
    modules = {"cnn": cnn()}
    export(modules["cnn"], torch.randn(2, 3, 8, 8), tmp / "cnn.onnx", (["image"], ["features", "pooled"]),
           image_axes)  # fmt: skip
    if importlib.util.find_spec("onnxscript") is not None:
        modules["encoder"] = encoder()
        export_dynamo(modules["encoder"], torch.randn(2, 5, D_MODEL), tmp / "encoder.onnx",
                      (["tokens"], ["encoded"]), seq_axes)  # fmt: skip
    for name in modules:
        gateway_convert(tmp / f"{name}.onnx", name, repo)
    port = free_port()
    # A little batching delay, so that requests in flight at once meet in the queue.
    srv = start_server(repo, tmp, "--grpc-port", str(port), "--max-batch-rows", "64", "--max-delay-ms", "5")
    srv.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield srv, modules
    srv.stop()


def torch_outputs(module: Any, array: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(torch.from_numpy(array))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


async def http_binary(
    client: httpx.AsyncClient, url: str, name: str, array: np.ndarray
) -> dict[str, np.ndarray]:
    """The binary tensor extension: a JSON header, then the raw little-endian tensors."""
    raw = array.astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": name, "shape": list(array.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    response = await client.post(url, content=header + raw, headers={
        "Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})  # fmt: skip
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    body, offset, outputs = json.loads(response.content[:length]), length, {}
    for out in body["outputs"]:
        size = out["parameters"]["binary_data_size"]
        outputs[out["name"]] = np.frombuffer(response.content[offset : offset + size], "<f4").reshape(
            out["shape"]
        )
        offset += size
    return outputs


async def grpc_infer(client: Any, model: str, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
    tensor = InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    result = await client.infer(model, [tensor])
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def batches(srv: Any, model: str) -> tuple[int, int]:
    """(inference count, execution count) from Triton's statistics: rows and batches."""
    stats = httpx.get(f"{srv.url}/v2/models/{model}/stats").json()["model_stats"][0]
    return stats["inference_count"], stats["execution_count"]


async def mixed(
    srv: Any, model: str, name: str, shapes: list[tuple[int, ...]]
) -> list[tuple[np.ndarray, Any]]:
    """Every shape sent at once, alternating HTTP binary and gRPC: (input, outputs) pairs."""
    rng = np.random.default_rng(len(shapes))
    arrays = [rng.normal(size=s).astype(np.float32) for s in shapes]
    async with httpx.AsyncClient(timeout=60) as client, tc_aio.InferenceServerClient(srv.grpc) as grpc_client:
        url = f"{srv.url}/v2/models/{model}/infer"
        calls = [http_binary(client, url, name, a) if i % 2 else grpc_infer(grpc_client, model, name, a)
                 for i, a in enumerate(arrays)]  # fmt: skip
        results = await asyncio.gather(*calls)
    return list(zip(arrays, results, strict=True))


def test_transformer_encoder_mixed_sequence_lengths_in_flight(served):
    srv, modules = served
    if "encoder" not in modules:
        pytest.skip("exporting TransformerEncoder with a dynamic sequence needs onnxscript (dynamo exporter)")
    rows_before, batches_before = batches(srv, "encoder")
    shapes = [(2, length, D_MODEL) for length in (3, 7, 12)] * 11  # 33 requests at once
    started = time.monotonic()
    for array, outputs in asyncio.run(mixed(srv, "encoder", "tokens", shapes)):
        (want,) = torch_outputs(modules["encoder"], array)
        assert outputs["encoded"].shape == want.shape
        np.testing.assert_allclose(outputs["encoded"], want, rtol=1e-4, atol=1e-4)
    assert time.monotonic() - started < 60
    rows, executions = batches(srv, "encoder")
    assert rows - rows_before == 2 * len(shapes)
    # Each length with its own kind, never one by one (a batch of two lengths would fail).
    assert executions - batches_before < len(shapes)


def test_cnn_mixed_image_sizes_in_flight(served):
    srv, modules = served
    shapes = [(1, 3, 8, 8), (2, 3, 16, 12), (3, 3, 5, 9)] * 6
    for array, outputs in asyncio.run(mixed(srv, "cnn", "image", shapes)):
        features, pooled = torch_outputs(modules["cnn"], array)
        np.testing.assert_allclose(outputs["features"], features, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(outputs["pooled"], pooled, rtol=1e-4, atol=1e-5)


def test_exported_signatures_keep_their_dynamic_axes(served):
    srv, modules = served
    if "encoder" in modules:
        encoder_meta = httpx.get(f"{srv.url}/v2/models/encoder").json()
        assert encoder_meta["inputs"] == [{"name": "tokens", "datatype": "FP32", "shape": [-1, -1, D_MODEL]}]
    cnn_config = httpx.get(f"{srv.url}/v2/models/cnn/config").json()
    assert cnn_config["max_batch_size"] == 64
    assert [i["dims"] for i in cnn_config["input"]] == [[3, -1, -1]]
