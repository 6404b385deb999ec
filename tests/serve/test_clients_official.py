"""The official clients, used as their users use them, against a real `gateway serve`:
Triton's tritonclient.http (sync and aio), KServe's InferenceRESTClient, and perf_analyzer.

Their pins (numpy 1.x, kserve's own server stack) conflict with our lock, so they live in
their own virtual environment, built by .ci/run (tritonclient==2.51.0: the last wheel whose
perf_analyzer binary runs on Debian 12's glibc). Each client runs as a script in that
environment; this side compares what it printed with what the gateway answers over plain
HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from tests.conftest import ROOT, start_server

CLIENTS = Path(os.environ.get("GATEWAY_CLIENTS_VENV", ROOT / ".venv-clients"))
PYTHON = CLIENTS / "bin" / "python"
TOKEN = "h14-clients-token"

pytestmark = pytest.mark.skipif(
    not PYTHON.exists(), reason=f"no client environment at {CLIENTS}: `bash .ci/run` builds it"
)


@pytest.fixture(scope="module")
def srv(demo_repo, tmp_path_factory):
    server = start_server(
        demo_repo, tmp_path_factory.mktemp("official"), "--log-level", "warning",
        env={"GATEWAY_ADMIN_TOKEN": TOKEN},
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rows(srv, tmp_path_factory) -> tuple[Path, np.ndarray, dict[str, np.ndarray]]:
    """Eight rows in the model's input dtype, saved for the client scripts, and what the
    gateway answers for them over plain HTTP (the expected values)."""
    datatype = httpx.get(f"{srv.url}/v2/models/breast_cancer").json()["inputs"][0]["datatype"]
    x = load_breast_cancer(return_X_y=True)[0][:8].astype(np.float32 if datatype == "FP32" else np.float64)
    path = tmp_path_factory.mktemp("rows") / "x.npy"
    np.save(path, x)
    body = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}
        ]
    }
    outputs = httpx.post(f"{srv.url}/v2/models/breast_cancer/infer", json=body).json()["outputs"]
    expected = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in outputs}
    return path, x, expected


def _run(script: str, *args: str, timeout: float = 120) -> dict:
    """A client script in the clients' environment; its last stdout line is its JSON result."""
    done = subprocess.run(
        [str(PYTHON), "-c", script, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


TRITON_SYNC = r"""
import json, sys
import numpy as np
import tritonclient.http as http

url, x_path, token = sys.argv[1].removeprefix("http://"), sys.argv[2], sys.argv[3]
x = np.load(x_path)
client = http.InferenceServerClient(url)
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready("breast_cancer"),
       "extensions": client.get_server_metadata()["extensions"]}
datatype = client.get_model_metadata("breast_cancer")["inputs"][0]["datatype"]
config = client.get_model_config("breast_cancer")
out["config"] = {"max_batch_size": config["max_batch_size"], "dims": config["input"][0]["dims"]}

def infer(binary, **kwargs):
    inp = http.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    wanted = [http.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    result = client.infer("breast_cancer", [inp], outputs=wanted, **kwargs)
    return {n: result.as_numpy(n).tolist() for n in ("label", "probabilities")}

out["json"], out["binary"] = infer(False), infer(True)
out["versioned"] = infer(True, model_version="1", request_id="abc")
for algorithm in ("gzip", "deflate"):
    out[algorithm] = infer(False, request_compression_algorithm=algorithm,
                           response_compression_algorithm=algorithm)
inp = http.InferInput("input", list(x.shape), datatype)
inp.set_data_from_numpy(x)
result = client.infer("breast_cancer", [inp],
                      outputs=[http.InferRequestedOutput("probabilities", class_count=2)])
out["classes"] = [[v.decode() for v in row] for row in result.as_numpy("probabilities")]
out["stats_all"] = client.get_inference_statistics()["model_stats"]
out["stats"] = client.get_inference_statistics("breast_cancer", "1")["model_stats"]
auth = {"Authorization": f"Bearer {token}"}
out["index"] = client.get_model_repository_index(headers=auth)
client.unload_model("diabetes", headers=auth)
out["unloaded_ready"] = client.is_model_ready("diabetes")
client.load_model("diabetes", headers=auth)
out["reloaded_ready"] = client.is_model_ready("diabetes")
try:
    client.get_model_repository_index()
except Exception as exc:  # tritonclient raises InferenceServerException with the server's message
    out["index_without_token"] = str(exc)
print(json.dumps(out))
"""


def test_tritonclient_http_sync_does_everything_a_triton_user_does(srv, rows):
    path, x, expected = rows
    out = _run(TRITON_SYNC, srv.url, str(path), TOKEN)
    assert out["live"] and out["ready"] and out["model_ready"]
    assert {"classification", "statistics", "model_repository", "binary_tensor_data"} <= set(
        out["extensions"]
    )
    assert out["config"] == {"max_batch_size": 256, "dims": [30]}
    for kind in ("json", "binary", "versioned", "gzip", "deflate"):
        assert out[kind]["label"] == expected["label"].tolist(), kind
        np.testing.assert_allclose(out[kind]["probabilities"], expected["probabilities"], rtol=1e-6)
    for i, (first, second) in enumerate(out["classes"]):
        best = int(np.argmax(expected["probabilities"][i]))
        assert first.split(":")[1:] == [str(best), str(best)]
        assert float(first.split(":")[0]) >= float(second.split(":")[0])
    assert {s["name"] for s in out["stats_all"]} == {"breast_cancer", "diabetes"}
    (stats,) = out["stats"]
    assert stats["inference_stats"]["success"]["count"] >= 6 and stats["inference_count"] >= 6 * len(x)
    assert {"name": "diabetes", "version": "1", "state": "READY"} in out["index"]
    assert out["unloaded_ready"] is False and out["reloaded_ready"] is True
    assert "401" in out["index_without_token"] or "Bearer" in out["index_without_token"]


TRITON_AIO = r"""
import asyncio, json, sys
import numpy as np
import tritonclient.http.aio as aiohttpclient
import tritonclient.http as http

async def main():
    url, x_path = sys.argv[1].removeprefix("http://"), sys.argv[2]
    x = np.load(x_path)
    client = aiohttpclient.InferenceServerClient(url)
    datatype = (await client.get_model_metadata("breast_cancer"))["inputs"][0]["datatype"]

    async def one(i):
        inp = http.InferInput("input", [1, x.shape[1]], datatype)
        inp.set_data_from_numpy(x[i % len(x)][None, :], binary_data=True)
        result = await client.infer("breast_cancer", [inp], request_compression_algorithm="gzip",
                                    response_compression_algorithm="gzip")
        return int(result.as_numpy("label")[0])

    labels = await asyncio.gather(*(one(i) for i in range(64)))
    stats = await client.get_inference_statistics("breast_cancer")
    config = await client.get_model_config("breast_cancer")
    await client.close()
    print(json.dumps({"labels": labels, "stats": stats["model_stats"], "platform": config["platform"]}))

asyncio.run(main())
"""


def test_tritonclient_http_aio_concurrent_with_compression(srv, rows):
    path, x, expected = rows
    out = _run(TRITON_AIO, srv.url, str(path))
    assert out["labels"] == [int(expected["label"][i % len(x)]) for i in range(64)]
    assert (
        out["platform"] == "onnxruntime_onnx" and out["stats"][0]["inference_stats"]["success"]["count"] >= 64
    )


KSERVE = r"""
import asyncio, json, sys
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

async def main():
    url, x_path, datatype = sys.argv[1], sys.argv[2], sys.argv[3]
    x = np.load(x_path)
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    out = {}
    for binary in (False, True):
        inp = InferInput("input", list(x.shape), datatype)
        inp.set_data_from_numpy(x, binary_data=binary)
        request = InferRequest(model_name="breast_cancer", infer_inputs=[inp], request_id="k-1",
                               request_outputs=[RequestedOutput("probabilities", {"binary_data": binary})])
        response = await client.infer(url, request, model_name="breast_cancer")
        (tensor,) = response.outputs
        out["binary" if binary else "json"] = {"id": response.id, "name": tensor.name,
                                               "probabilities": tensor.as_numpy().tolist()}
    bad = InferRequest(model_name="diabetes", infer_inputs=[inp])
    try:
        await client.infer(url, bad, model_name="breast_cancer")
    except Exception as exc:
        out["mismatch"] = str(exc)
    await client.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_kserve_rest_client_with_infer_request_json_and_binary(srv, rows):
    path, x, expected = rows
    out = _run(KSERVE, srv.url, str(path), "FP32" if x.dtype == np.float32 else "FP64")
    for kind in ("json", "binary"):
        assert out[kind]["id"] == "k-1" and out[kind]["name"] == "probabilities"
        np.testing.assert_allclose(out[kind]["probabilities"], expected["probabilities"], rtol=1e-6)
    assert "400" in out["mismatch"] and "does not match" in out["mismatch"]


def _perf_analyzer_env() -> dict[str, str]:
    cudart = next((CLIENTS / "lib").glob("python3*/site-packages/nvidia/cuda_runtime/lib"), None)
    assert cudart is not None, "nvidia-cuda-runtime-cu12 is missing from the client environment"
    return {**os.environ, "LD_LIBRARY_PATH": f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


@pytest.mark.slow
def test_perf_analyzer_sweeps_concurrency_and_reads_server_side_counts(srv, tmp_path):
    before = httpx.get(f"{srv.url}/v2/models/breast_cancer/stats").json()["model_stats"][0]
    report = tmp_path / "perf.csv"
    done = subprocess.run(
        [
            str(CLIENTS / "bin" / "perf_analyzer"), "-m", "breast_cancer", "-i", "http",
            "-u", srv.url.removeprefix("http://"), "--concurrency-range", "1:4:3",
            # Windows of 200 requests, stable at any spread (-s is a percentage; 100 failed
            # on a loaded 2-core machine): this checks that perf_analyzer works against us,
            # not how steady a shared machine is.
            "--measurement-mode", "count_windows", "--measurement-request-count", "200",
            "-s", "1000", "--max-trials", "10", "-f", str(report), "--verbose-csv",
        ],
        capture_output=True, text=True, timeout=180, env=_perf_analyzer_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "Request concurrency: 1" in out and "Request concurrency: 4" in out
    # "Server:" blocks come from our statistics endpoint; the counts are the server's own.
    server_counts = [
        int(line.split(":")[1]) for line in out.splitlines() if "Successful request count" in line
    ]
    assert len(server_counts) == 2 and all(n > 0 for n in server_counts), out
    after = httpx.get(f"{srv.url}/v2/models/breast_cancer/stats").json()["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"][
        "count"
    ] >= sum(server_counts)
    assert "Concurrency" in report.read_text()


TRITON_CONFIGURED = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpc
import tritonclient.http as http

url, grpc_url = sys.argv[1].removeprefix("http://"), sys.argv[2]
out = {}
for name, module, client in (("http", http, http.InferenceServerClient(url)),
                             ("grpc", grpc, grpc.InferenceServerClient(grpc_url))):
    scores = module.InferInput("x", [4], "FP32")
    scores.set_data_from_numpy(np.array([0.1, 0.7, 0.15, 0.05], np.float32))
    top = client.infer("nobatch", [scores], outputs=[module.InferRequestedOutput("y", class_count=2)])
    square = module.InferInput("x", [1, 4, 4], "FP32")
    square.set_data_from_numpy(np.arange(16, dtype=np.float32).reshape(1, 4, 4))
    flat = client.infer("reshaped", [square]).as_numpy("y")
    out[name] = {"top": [v.decode() for v in top.as_numpy("y")], "shape": list(flat.shape),
                 "data": flat.ravel().tolist()}
print(json.dumps(out))
"""


def _triton_repository(tmp: Path) -> Path:
    """Two ONNX graphs converted with their Triton configurations: scores without a batch
    dimension (a label file), and a batched 2 x 8 graph that clients see as 4 x 4."""
    import onnx
    from onnx import TensorProto, helper

    from converters import convert

    repo = tmp / "repo"
    for name, shape, config in (
        ("nobatch", [None], 'max_batch_size: 0\noutput [ { name: "y" dims: [ -1 ] label_filename: "l.txt" } ]'),
        ("reshaped", [None, 2, 8], "max_batch_size: 8\n" + "\n".join(
            f'{kind} [ {{ name: "{n}" dims: [ 4, 4 ] reshape: {{ shape: [ 2, 8 ] }} }} ]'
            for kind, n in (("input", "x"), ("output", "y")))),
    ):  # fmt: skip
        x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "xy")
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name, [x], [y])
        onnx.save(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp / f"{name}.onnx")
        )
        (tmp / f"{name}.pbtxt").write_text(config)
        (tmp / "l.txt").write_text("cat\ndog\nbird\nfish\n")
        convert(tmp / f"{name}.onnx", name=name, version="1", repo=repo, triton_config=tmp / f"{name}.pbtxt")
    return repo


def test_tritonclient_on_models_converted_with_their_triton_configuration(tmp_path):
    """Triton's own qa models come with config.pbtxt: tritonclient over HTTP and gRPC gets
    Triton's answers for an unbatched model's classification and for a reshape."""
    from tests.conftest import free_port

    port = free_port()
    server = start_server(
        _triton_repository(tmp_path), tmp_path, "--grpc-port", str(port), "--log-level", "warning"
    )
    try:
        out = _run(TRITON_CONFIGURED, server.url, f"127.0.0.1:{port}")
    finally:
        server.stop()
    for transport in ("http", "grpc"):
        assert out[transport] == {"top": ["0.700000:1:dog", "0.150000:2:bird"], "shape": [1, 4, 4],
                                  "data": list(range(16))}, transport  # fmt: skip
