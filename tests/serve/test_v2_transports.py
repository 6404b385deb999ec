"""Every V2 case over every transport: HTTP JSON, HTTP binary and gRPC, against one real
`gateway serve`. The same request must get the same answer (or the same refusal, with
the same words) whichever way it travels: a difference between transports fails here.

This process never imports gateway.proto's generated modules: tritonclient registers
the same `inference.*` message names in protobuf's default pool.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import msgspec
import numpy as np
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.artifacts.manifest import TensorSpec
from gateway.artifacts.repository import Repository
from tests.conftest import free_port, start_server
from tests.security.models import _model, publish, publish_echo, publish_identity, publish_identity_any

TOKEN = "transports-admin-token"
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_, "BYTES": np.object_}
ONNX_TYPES = {"FP32": TensorProto.FLOAT, "INT64": TensorProto.INT64, "BOOL": TensorProto.BOOL}


def _identity(repo: Path, name: str, datatype: str, width: int, version: str = "1") -> None:
    x = helper.make_tensor_value_info("x", ONNX_TYPES[datatype], [None, width])
    y = helper.make_tensor_value_info("y", ONNX_TYPES[datatype], [None, width])
    model = _model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name, [x], [y]))
    publish(
        repo, name, version, model,
        [TensorSpec(name="x", datatype=datatype, shape=[-1, width])],  # type: ignore[arg-type]
        [TensorSpec(name="y", datatype=datatype, shape=[-1, width], role="value")],  # type: ignore[arg-type]
    )  # fmt: skip


def _classifier(tmp: Path, repo: Path) -> None:
    import joblib
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    x = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "b": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]})
    joblib.dump(LogisticRegression().fit(x, [0, 0, 0, 1, 1, 1]), tmp / "clf.joblib")
    from converters import convert

    convert(tmp / "clf.joblib", name="clf", version="1", repo=repo, sample=x)


def _labelled(tmp: Path, repo: Path) -> None:
    """Pass-through ONNX models of four scores, converted with `--labels y=labels.txt`:
    `scores` with a batch dimension, `scores1` without one (Triton's max_batch_size 0)."""
    from gateway.cli.main import main

    (tmp / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
    for name, shape in (("scores", [None, 4]), ("scores1", [4])):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name, [x], [y])
        (tmp / f"{name}.onnx").write_bytes(_model(graph))
        args = ["convert", str(tmp / f"{name}.onnx"), "--name", name, "--version", "1", "--repo", str(repo)]
        assert main([*args, "--labels", "y=" + str(tmp / "labels.txt")]) == 0


def _unbatched(tmp: Path, repo: Path) -> None:
    """Two 1-D inputs of any length passed through, converted with a Triton configuration
    of max_batch_size 0: their first dimensions are lengths, not a batch size."""
    from converters import convert

    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in "ab")
    y, z = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in "yz")
    nodes = [helper.make_node("Identity", ["a"], ["y"]), helper.make_node("Identity", ["b"], ["z"])]
    (tmp / "pair.onnx").write_bytes(_model(helper.make_graph(nodes, "pair", [a, b], [y, z])))
    (tmp / "config.pbtxt").write_text("max_batch_size: 0\n")
    convert(tmp / "pair.onnx", name="pair", version="1", repo=repo, triton_config=tmp / "config.pbtxt")


def _reshaped(tmp: Path, repo: Path) -> None:
    """A graph of 2 x 8 numbers a row that clients see as 4 x 4: Triton's reshape."""
    from converters import convert

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 2, 8]) for n in "xy")
    (tmp / "flat.onnx").write_bytes(
        _model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "flat", [x], [y]))
    )
    tensor = '{ name: "%s" dims: [ 4, 4 ] reshape: { shape: [ 2, 8 ] } }'
    (tmp / "flat.pbtxt").write_text(
        f"max_batch_size: 8\ninput [ {tensor % 'x'} ]\noutput [ {tensor % 'y'} ]\n"
    )
    convert(tmp / "flat.onnx", name="flat", version="1", repo=repo, triton_config=tmp / "flat.pbtxt")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transports")
    repo = tmp / "repo"
    publish_identity(repo)  # ident: FP32 [-1, 4]
    publish_identity_any(repo)  # var: FP32 [-1, -1]
    publish_echo(repo)  # echo: BYTES [-1, 1]
    _identity(repo, "i64", "INT64", 3)
    _identity(repo, "flags", "BOOL", 2)
    _identity(repo, "spare", "FP32", 2)  # unloaded and loaded again by the repository tests
    for version in ("10", "9"):  # loaded in this order: live, then canary
        _identity(repo, "ver", "FP32", 2, version)
    Repository(repo).set_live("ver", "10")
    Repository(repo).set_canary("ver", "9", 1.0)
    _classifier(tmp, repo)
    _labelled(tmp, repo)
    _unbatched(tmp, repo)
    _reshaped(tmp, repo)
    port = free_port()
    srv = start_server(
        repo, tmp, "--grpc-port", str(port), "--log-level", "warning", env={"GATEWAY_ADMIN_TOKEN": TOKEN}
    )
    srv.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    with httpx.Client(base_url=srv.url, timeout=30) as client, grpc.insecure_channel(srv.grpc) as channel:
        yield srv, client, service_pb2_grpc.GRPCInferenceServiceStub(channel)
    srv.stop()


@dataclass
class Result:
    """An answer, whichever transport carried it: outputs, or a refusal's kind and words."""

    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    id: str = ""
    kind: str = "ok"  # ok | invalid | not_found | too_large | ...
    message: str = ""
    status: int = 200  # HTTP's status; gRPC's code's HTTP meaning


KINDS = {400: "invalid", 422: "invalid", 404: "not_found", 413: "too_large", 401: "unauthenticated",
         403: "denied"}  # fmt: skip
CODES = {grpc.StatusCode.INVALID_ARGUMENT: "invalid", grpc.StatusCode.NOT_FOUND: "not_found",
         grpc.StatusCode.RESOURCE_EXHAUSTED: "too_large", grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
         grpc.StatusCode.PERMISSION_DENIED: "denied"}  # fmt: skip


def _raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        return b"".join(struct.pack("<I", len(v)) + v for v in items)
    return np.ascontiguousarray(array, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).tobytes()


def _from_raw(raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).reshape(shape)
    values, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        values.append(raw[pos + 4 : pos + 4 + size].decode())
        pos += 4 + size
    return np.array(values, dtype=object).reshape(shape)


@dataclass
class Tensor:
    name: str
    array: np.ndarray
    datatype: str
    shape: list[int] | None = None  # as declared, when it differs from the array's
    size: int | None = None  # a binary_data_size to declare instead of the data's


class Http:
    def __init__(self, client: httpx.Client, binary: bool) -> None:
        self.client, self.binary = client, binary

    def infer(self, model: str, inputs: list[Tensor], outputs: list[dict] | None = None,
              parameters: dict | None = None, id: str | None = None, version: str | None = None,
              ) -> Result:  # fmt: skip
        header: dict[str, Any] = {"inputs": []}
        tail = b""
        for t in inputs:
            entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype,
                                     "shape": t.shape if t.shape is not None else list(t.array.shape)}  # fmt: skip
            if t.size is not None:  # a size of our choosing; in binary, as much data as it says (or less)
                entry["parameters"] = {"binary_data_size": t.size}
                tail += _raw(t.array, t.datatype)[: t.size] if self.binary else b""
            elif self.binary:
                raw = _raw(t.array, t.datatype)
                entry["parameters"] = {"binary_data_size": len(raw)}
                tail += raw
            else:
                entry["data"] = t.array.reshape(-1).tolist()
            header["inputs"].append(entry)
        if outputs is not None:
            header["outputs"] = [
                {**o, "parameters": {**o.get("parameters", {}), "binary_data": self.binary}} for o in outputs
            ]
        header["parameters"] = {**(parameters or {}), "binary_data_output": self.binary}
        if id is not None:
            header["id"] = id
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        head = msgspec.json.encode(header)
        headers = {"content-type": "application/json"}
        if self.binary:
            headers = {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(head)),
            }
        return self._result(self.client.post(path, content=head + tail, headers=headers))

    @staticmethod
    def _result(r: httpx.Response) -> Result:
        if r.status_code != 200:
            return Result(kind=KINDS.get(r.status_code, str(r.status_code)), message=r.json()["error"],
                          status=r.status_code)  # fmt: skip
        length = r.headers.get("inference-header-content-length")
        body = msgspec.json.decode(r.content[: int(length)] if length else r.content)
        tail, pos, outputs = r.content[int(length) :] if length else b"", 0, {}
        for o in body["outputs"]:
            if "data" in o:
                outputs[o["name"]] = np.array(o["data"], dtype=DTYPES[o["datatype"]]).reshape(o["shape"])
            else:
                size = o["parameters"]["binary_data_size"]
                outputs[o["name"]] = _from_raw(tail[pos : pos + size], o["datatype"], o["shape"])
                pos += size
        return Result(outputs, body.get("id", ""))


class Grpc:
    def __init__(self, stub: Any) -> None:
        self.stub = stub

    def infer(self, model: str, inputs: list[Tensor], outputs: list[dict] | None = None,
              parameters: dict | None = None, id: str | None = None, version: str | None = None,
              ) -> Result:  # fmt: skip
        request = service_pb2.ModelInferRequest(model_name=model, model_version=version or "", id=id or "")
        for t in inputs:
            shape = t.shape if t.shape is not None else list(t.array.shape)
            request.inputs.add(name=t.name, datatype=t.datatype, shape=shape)
            raw = _raw(t.array, t.datatype)
            request.raw_input_contents.append(raw if t.size is None else raw[: t.size])
        for o in outputs or []:
            out = request.outputs.add(name=o["name"])
            for key, value in o.get("parameters", {}).items():
                out.parameters[key].int64_param = value
        for key, value in (parameters or {}).items():
            request.parameters[key].int64_param = value
        try:
            response = self.stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            return Result(kind=CODES.get(exc.code(), exc.code().name), message=exc.details() or "")
        return Result(
            {o.name: _from_raw(raw, o.datatype, list(o.shape))
             for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)},
            response.id,
        )  # fmt: skip


TRANSPORTS = ["http-json", "http-binary", "grpc"]


@pytest.fixture(params=TRANSPORTS)
def transport(request, server):
    _, client, stub = server
    return Grpc(stub) if request.param == "grpc" else Http(client, binary=request.param == "http-binary")


def _same_refusal(result: Result, kind: str, words: str) -> None:
    """A refusal of this kind whose message starts with `words` (gRPC may add where)."""
    assert result.kind == kind, result
    assert result.message.startswith(words), result.message


@pytest.mark.parametrize(
    ("model", "datatype", "array"),
    [
        ("ident", "FP32", np.array([[1.5, -2, 3, 4e6], [0, 1, 2, 3]], np.float32)),
        ("i64", "INT64", np.array([[1, -(2**40), 3]], np.int64)),
        ("flags", "BOOL", np.array([[True, False], [False, True]])),
        ("echo", "BYTES", np.array([["a"], ["é"], [""]], dtype=object)),
    ],
)
def test_infer_each_datatype(transport, model, datatype, array):
    result = transport.infer(model, [Tensor("x" if model != "echo" else "text", array, datatype)], id="r1")
    assert result.kind == "ok", result
    (out,) = result.outputs.values()
    assert out.shape == array.shape and out.tolist() == array.tolist()
    assert result.id == "r1"


def test_classification_of_a_converted_classifier(transport):
    rows = np.array([[0.0, 1.0], [5.0, 0.0]])
    wanted = [{"name": "probabilities", "parameters": {"classification": 1}}]
    result = transport.infer("clf", [Tensor("input", rows, "FP64")], wanted)
    assert result.kind == "ok", result
    top = result.outputs["probabilities"]
    assert top.shape == (2, 1)
    assert [t.split(":")[1:] for t in top[:, 0]] == [["0", "0"], ["1", "1"]]


def test_classification_with_a_labels_file_given_at_convert(transport):
    scores = np.array([[0.1, 0.7, 0.15, 0.05]], np.float32)
    result = transport.infer(
        "scores", [Tensor("x", scores, "FP32")], [{"name": "y", "parameters": {"classification": 2}}]
    )
    assert result.kind == "ok", result
    assert result.outputs["y"].tolist() == [["0.700000:1:dog", "0.150000:2:bird"]]


def test_classification_of_a_model_without_a_batch_dimension(transport):
    """Triton ranks an unbatched model's whole output: the answer is [k], not [1, k]."""
    scores = np.array([0.1, 0.7, 0.15, 0.05], np.float32)
    result = transport.infer(
        "scores1", [Tensor("x", scores, "FP32")], [{"name": "y", "parameters": {"classification": 3}}]
    )
    assert result.kind == "ok", result
    assert result.outputs["y"].tolist() == ["0.700000:1:dog", "0.150000:2:bird", "0.100000:0:cat"]


def test_an_unbatched_models_inputs_may_differ_in_their_first_dimension(transport):
    a, b = np.array([1.0, 2.0], np.float32), np.array([3.0, 4.0, 5.0], np.float32)
    result = transport.infer("pair", [Tensor("a", a, "FP32"), Tensor("b", b, "FP32")])
    assert result.kind == "ok", result
    assert result.outputs["y"].tolist() == [1.0, 2.0] and result.outputs["z"].tolist() == [3.0, 4.0, 5.0]


def test_a_reshaped_tensor_travels_in_the_configured_dims(transport, server):
    x = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    result = transport.infer("flat", [Tensor("x", x, "FP32")])
    assert result.kind == "ok", result
    assert result.outputs["y"].shape == (2, 4, 4) and result.outputs["y"].tolist() == (-x).tolist()
    _, client, stub = server
    http = client.get("/v2/models/flat/config").json()["input"][0]
    grpc_config = stub.ModelConfig(service_pb2.ModelConfigRequest(name="flat")).config.input[0]
    assert http["dims"] == list(grpc_config.dims) == [4, 4]
    assert http["reshape"] == {"shape": [2, 8]} and list(grpc_config.reshape.shape) == [2, 8]
    flat = transport.infer("flat", [Tensor("x", x.reshape(2, 2, 8), "FP32")])
    _same_refusal(flat, "invalid", "input 'x' has shape [2, 2, 8]; the model takes [-1, 4, 4]")


def test_unknown_model_and_version_in_tritons_words(transport):
    x = [Tensor("x", np.ones((1, 4), np.float32), "FP32")]
    _same_refusal(transport.infer("nope", x), "not_found", "Request for unknown model: 'nope' is not found")
    missing = transport.infer("ident", x, version="3")
    _same_refusal(missing, "not_found", "Request for unknown model: 'ident' version 3 is not found")
    assert "echo" not in missing.message and "clf" not in missing.message


def test_timeout_zero_means_none(transport):
    result = transport.infer(
        "ident", [Tensor("x", np.ones((1, 4), np.float32), "FP32")], parameters={"timeout": 0}
    )
    assert result.kind == "ok", result


def test_zero_element_tensors(transport):
    empty = transport.infer("ident", [Tensor("x", np.zeros((0, 4), np.float32), "FP32")])
    assert empty.kind == "ok", empty
    assert empty.outputs["y"].shape == (0, 4)
    no_columns = transport.infer("var", [Tensor("x", np.zeros((1, 0), np.float32), "FP32")])
    assert no_columns.kind == "ok", no_columns
    assert no_columns.outputs["y"].shape == (1, 0)


def test_refusals_triton_answers_400(transport):
    x = np.ones((1, 4), np.float32)
    twice = transport.infer("ident", [Tensor("x", x, "FP32")], [{"name": "y"}, {"name": "y"}])
    _same_refusal(twice, "invalid", "output 'y' already exists in request")
    negative = transport.infer("ident", [Tensor("x", x, "FP32", shape=[-1, 4])])
    _same_refusal(negative, "invalid", "input 'x' has a negative dimension")
    huge = transport.infer("var", [Tensor("x", x, "FP32", shape=[2**4, 2**60 + 2])])
    _same_refusal(huge, "invalid", "input 'x' shape [16, 1152921504606846978] causes total element count")
    wide = transport.infer("var", [Tensor("x", x, "FP32", shape=[2**2, 2**60 + 2])])
    _same_refusal(wide, "invalid", "byte size overflow for input 'x'")
    for result in (twice, negative, huge, wide):
        assert result.status in (200, 400)  # HTTP: 400, as Triton; gRPC: INVALID_ARGUMENT


def test_a_byte_size_beyond_the_data_is_400(server):
    """HTTP only: gRPC's raw_input_contents carries its own sizes, which cannot overrun."""
    _, client, _ = server
    for binary in (False, True):
        result = Http(client, binary).infer(
            "ident", [Tensor("x", np.ones((1, 4), np.float32), "FP32", size=1 << 40)]
        )
        assert result.status == 400 and result.message == "binary_data_size overruns the body", result


def test_a_short_raw_tensor_is_refused_alike(transport):
    if isinstance(transport, Http) and not transport.binary:
        pytest.skip("JSON data carries no raw bytes")
    result = transport.infer("ident", [Tensor("x", np.ones((1, 4), np.float32), "FP32", size=12)])
    _same_refusal(result, "invalid", "binary tensor size does not match its shape")


def test_metadata_versions_sorted_numerically(server):
    _, client, stub = server
    assert client.get("/v2/models/ver").json()["versions"] == ["9", "10"]
    assert list(stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="ver")).versions) == ["9", "10"]
    http = client.get("/v2/models/nope")
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="nope"))
    assert http.status_code == 404 and info.value.code() == grpc.StatusCode.NOT_FOUND
    assert http.json()["error"] == info.value.details() == "Request for unknown model: 'nope' is not found"


def test_request_ids_follow_one_rule(server):
    _, client, stub = server
    x = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert (
        client.post("/v2/models/ident/infer", json=x, headers={"x-request-id": "abc-1"}).headers[
            "x-request-id"
        ]
        == "abc-1"
    )
    request = service_pb2.ModelInferRequest(model_name="ident")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    _, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "abc-1")], timeout=10)
    assert dict(call.trailing_metadata())["x-request-id"] == "abc-1"
    sent = 0
    for bad in ("a\tb", "a\nb", "a\x1bb", "x" * 200, "caf\u00e9"):
        try:
            _, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", bad)], timeout=10)
        except grpc.RpcError as exc:  # gRPC's client refuses to send it: nothing reaches the server
            assert exc.code() == grpc.StatusCode.INTERNAL and exc.details() == "Invalid metadata"
            continue
        sent += 1
        given = dict(call.trailing_metadata())["x-request-id"]
        assert given != bad and given.isprintable() and len(given) == 16
        r = client.post("/v2/models/ident/infer", json=x, headers={"x-request-id": bad.encode("latin-1")})
        assert r.headers["x-request-id"] != bad
    assert sent, "no unusable id reached the server"


def test_repository_operations_need_one_bearer_token(server):
    _, client, stub = server
    good, other = f"Bearer {TOKEN}", "Bearer wrong"
    assert client.post("/v2/repository/index", headers={"authorization": good}).status_code == 200
    index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), metadata=[("authorization", good)])
    assert {(m.name, m.version) for m in index.models} >= {("ver", "9"), ("ver", "10"), ("ident", "1")}
    twice = client.post("/v2/repository/index", headers=[("authorization", good), ("authorization", good)])
    assert twice.status_code == 400
    for metadata, code in (
        ([("authorization", good), ("authorization", good)], grpc.StatusCode.INVALID_ARGUMENT),
        ([("authorization", good), ("authorization", other)], grpc.StatusCode.INVALID_ARGUMENT),
        ([("authorization", other)], grpc.StatusCode.PERMISSION_DENIED),
        ([], grpc.StatusCode.UNAUTHENTICATED),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), metadata=metadata)
        assert info.value.code() == code, (metadata, info.value)


class Repo:
    """Triton's repository extension over one transport; `auth` the authorization values."""

    def __init__(self, server: Any, kind: str) -> None:
        _, self.client, self.stub = server
        self.kind = kind

    def call(self, op: str, name: str = "", auth: tuple[str, ...] = (f"Bearer {TOKEN}",),
             ready: bool = False) -> tuple[Result, list[tuple[str, str, str]]]:  # fmt: skip
        headers = [("authorization", value) for value in auth]
        if self.kind == "http":
            path = "/v2/repository/index" if op == "index" else f"/v2/repository/models/{name}/{op}"
            r = self.client.post(path, headers=headers, json={"ready": ready} if op == "index" else None)
            if r.status_code != 200:
                return Result(
                    kind=KINDS.get(r.status_code, str(r.status_code)), message=r.json()["error"]
                ), []
            entries = r.json() if op == "index" else []
            return Result(), [(e["name"], e["version"], e["state"]) for e in entries]
        try:
            if op == "index":
                index = self.stub.RepositoryIndex(
                    service_pb2.RepositoryIndexRequest(ready=ready), metadata=headers
                )
                return Result(), [(m.name, m.version, m.state) for m in index.models]
            if op == "load":
                self.stub.RepositoryModelLoad(
                    service_pb2.RepositoryModelLoadRequest(model_name=name), metadata=headers
                )
            else:
                request = service_pb2.RepositoryModelUnloadRequest(model_name=name)
                self.stub.RepositoryModelUnload(request, metadata=headers)
        except grpc.RpcError as exc:
            return Result(kind=CODES.get(exc.code(), exc.code().name), message=exc.details() or ""), []
        return Result(), []


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_repository_unload_and_load_alike(server, kind):
    repo = Repo(server, kind)
    x = [Tensor("x", np.ones((1, 2), np.float32), "FP32")]
    infer = Grpc(repo.stub) if kind == "grpc" else Http(repo.client, binary=False)
    assert infer.infer("spare", x).kind == "ok"
    assert repo.call("unload", "spare")[0].kind == "ok"
    _, index = repo.call("index")
    assert ("spare", "1", "UNAVAILABLE") in index and ("ident", "1", "READY") in index
    assert all(entry[0] != "spare" for entry in repo.call("index", ready=True)[1])
    _same_refusal(infer.infer("spare", x), "not_found", "Request for unknown model: 'spare' is not found")
    assert repo.call("load", "spare")[0].kind == "ok"
    assert ("spare", "1", "READY") in repo.call("index", ready=True)[1]
    assert infer.infer("spare", x).kind == "ok"
    missing, _ = repo.call("load", "nope")
    _same_refusal(missing, "not_found", "Request for unknown model: 'nope' is not found")


@pytest.mark.parametrize("kind", ["http", "grpc"])
@pytest.mark.parametrize("op", ["index", "load", "unload"])
@pytest.mark.parametrize(
    ("auth", "refusal"),
    [
        ((), ("unauthenticated", "admin calls need")),
        (("Basic abc",), ("unauthenticated", "admin calls need")),
        (("Bearer wrong",), ("denied", "invalid admin token")),
        ((f"Bearer {TOKEN}", f"Bearer {TOKEN}"), ("invalid", "send one authorization value; 2 were sent")),
        ((f"Bearer {TOKEN}", "Bearer wrong"), ("invalid", "send one authorization value; 2 were sent")),
    ],
)
def test_repository_refusals_alike(server, kind, op, auth, refusal):
    """One check for both transports, before anything else is read (the model stays)."""
    result, _ = Repo(server, kind).call(op, "spare", auth)
    _same_refusal(result, *refusal)
    assert (
        Http(server[1], binary=False).infer("spare", [Tensor("x", np.ones((1, 2), np.float32), "FP32")]).kind
        == "ok"
    )


@pytest.mark.parametrize(
    "method",
    ["ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics", "ServerMetadata", "RepositoryIndex"],
)
def test_grpc_malformed_messages_are_invalid_argument(server, method):
    srv, _, _ = server
    call = grpc.insecure_channel(srv.grpc).unary_unary(
        f"/inference.GRPCInferenceService/{method}", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)  # a length beyond the message
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert "malformed" in (info.value.details() or "")
    # A huge one is refused by its size before it is parsed (a big map took seconds).
    huge = service_pb2.RepositoryModelLoadRequest(model_name="ident")
    for i in range(20_000):
        huge.parameters[str(i)].string_param = "x"
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as info:
        call(huge.SerializeToString(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "the limit is" in (
        info.value.details() or ""
    )
    assert time.perf_counter() - started < 1.0


def _raw_request(client: httpx.Client, model: str, body: bytes) -> tuple[dict, bytes]:
    """A raw binary request; Triton answers it in binary: the JSON header, then the data."""
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": "0"}
    r = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    if r.status_code != 200:
        return {"status": r.status_code, "error": r.json()["error"]}, b""
    length = int(r.headers["inference-header-content-length"])
    return msgspec.json.decode(r.content[:length]), r.content[length:]


def test_raw_binary_request(server):
    """HTTP only (Triton's): Inference-Header-Content-Length: 0, the body the single input's
    bytes, its shape deduced by Triton's rule, the outputs answered in binary."""
    _, client, _ = server
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    head, data = _raw_request(client, "ident", rows.tobytes())  # fixed row: as many rows as the body holds
    assert head["outputs"][0]["shape"] == [2, 4] and data == rows.tobytes()
    ragged, _ = _raw_request(client, "ident", rows.tobytes()[:-4])
    assert ragged["status"] == 400 and "not whole rows" in ragged["error"]
    head, data = _raw_request(client, "var", rows.tobytes())  # one variable dimension: a batch of one
    assert head["outputs"][0]["shape"] == [1, 8] and data == rows.tobytes()
    head, data = _raw_request(client, "echo", b"abc")  # BYTES of one element per row: the whole body
    assert head["outputs"][0]["shape"] == [1, 1] and data == struct.pack("<I", 3) + b"abc"
    two, _ = _raw_request(client, "pair", rows.tobytes())
    assert two["status"] == 400
    assert two["error"].startswith(
        "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs"
    )


def test_config_names_the_labels_file_of_a_labelled_output(server):
    """Triton's label_filename: the file given at convert, over HTTP and gRPC alike."""
    _, client, stub = server
    http = {o["name"]: o["label_filename"] for o in client.get("/v2/models/scores/config").json()["output"]}
    config = stub.ModelConfig(service_pb2.ModelConfigRequest(name="scores")).config
    assert http == {o.name: o.label_filename for o in config.output} == {"y": "labels.txt"}
    plain = client.get("/v2/models/ident/config").json()["output"]
    assert [o["label_filename"] for o in plain] == [""]


@pytest.mark.parametrize("kind", ["systemsharedmemory", "cudasharedmemory"])
def test_shared_memory_is_honestly_absent_over_http(server, kind):
    _, client, _ = server
    assert client.get(f"/v2/{kind}/status").json() == []
    named = client.get(f"/v2/{kind}/region/r0/status")
    assert named.status_code == 400 and "'r0'" in named.json()["error"]
    refused = client.post(f"/v2/{kind}/region/r0/register", json={"key": "/r0", "offset": 0, "byte_size": 16})
    assert refused.status_code == 400
    assert "shared memory is not supported by onnx-gateway" in refused.json()["error"]
    assert client.post(f"/v2/{kind}/unregister").status_code == 200
    assert client.post(f"/v2/{kind}/region/r0/unregister").status_code == 200
    assert client.get(f"/v2/{kind}/status").json() == []
