"""The second outside review's attacks, each against a real server: a request may not
allocate far beyond its size, hold the event loop, answer 500 or leak a path, whatever it
declares, repeats or asks for. Each test bounds the attack's cost (its time, the server's
peak memory) and checks that valid traffic still flows."""

from __future__ import annotations

import time

import grpc
import httpx
import msgspec
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import free_port, start_server
from tests.security.models import (
    peak_rss_mb,
    publish_add,
    publish_identity,
    publish_identity_any,
    publish_records,
    reset_peak_rss,
)

VAR = "/v2/models/var/infer"
IDENT = "/v2/models/ident/infer"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    repo = tmp_path_factory.mktemp("review2-repo")
    publish_identity(repo)
    publish_identity_any(repo)
    publish_add(repo)
    publish_records(repo)
    port = free_port()
    server = start_server(
        repo, tmp_path_factory.mktemp("review2"), "--grpc-port", str(port), "--log-level", "warning"
    )
    server.grpc = f"127.0.0.1:{port}"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield server, client
    server.stop()


class _Cost:
    """The server's peak memory growth and the wall time of what runs inside."""

    def __init__(self, server) -> None:
        self.pid = server.process.pid

    def __enter__(self) -> _Cost:
        reset_peak_rss(self.pid)
        self.before = peak_rss_mb(self.pid)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.grew_mb = peak_rss_mb(self.pid) - self.before


def _still_serves(client: httpx.Client) -> None:
    r = client.post(
        IDENT, json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    )
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1, 2, 3, 4], r.text
    assert client.get("/healthz").status_code == 200


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert len(r.content) < 2048, "an error body must not carry the client's input back"
    body = r.json()
    assert "/" not in body["error"].replace("a/b", ""), body  # no path
    return body


def _binary(header: dict, tail: bytes) -> tuple[bytes, dict[str, str]]:
    head = msgspec.json.encode(header)
    return head + tail, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }


def test_an_output_asked_for_many_times_is_refused(srv):
    """Each copy was encoded again: 19 KB asking 64 times for a 4096 x 1000 output took 3 GB."""
    server, client = srv
    rows = np.ones((4096, 1000), np.float32)
    for binary in (False, True):
        header = {"inputs": [{"name": "x", "shape": [4096, 1000], "datatype": "FP32",
                              "parameters": {"binary_data_size": rows.nbytes}}],
                  "outputs": [{"name": "y", "parameters": {"binary_data": binary}}] * 64}  # fmt: skip
        body, headers = _binary(header, rows.tobytes())
        with _Cost(server) as cost:
            r = client.post(VAR, content=body, headers=headers)
        detail = _error(r, 400)["detail"][0]  # Triton answers a repeated output 400
        assert detail["loc"] == ["body", "outputs", 1, "name"], detail
        assert cost.grew_mb < 100, cost.grew_mb
    # over gRPC too: the same decoder
    request = service_pb2.ModelInferRequest(model_name="ident")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    for _ in range(3):
        request.outputs.add(name="y")
    with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as refused:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert (
        refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "more than once" in refused.value.details()
    )
    _still_serves(client)


def test_classification_is_bounded_before_formatting(srv):
    """rows x k strings were formatted one by one on the event loop after inference (6 s).
    An output of fixed width is checked before inference; this one's width (-1) is known
    only after it, and is checked before a string is made."""
    server, client = srv
    rows = np.random.default_rng(0).random((100, 1000), dtype=np.float32)
    header = {"inputs": [{"name": "x", "shape": [100, 1000], "datatype": "FP32",
                          "parameters": {"binary_data_size": rows.nbytes}}],
              "outputs": [{"name": "y", "parameters": {"classification": 1000}}]}  # fmt: skip
    body, headers = _binary(header, rows.tobytes())
    with _Cost(server) as cost:
        r = client.post(VAR, content=body, headers=headers)
    assert "top 1000 on 100 rows" in _error(r, 413)["error"]
    assert cost.seconds < 1.0
    header["outputs"] = [{"name": "y", "parameters": {"classification": 3}}]
    body, headers = _binary(header, rows.tobytes())
    r = client.post(VAR, content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    top = np.argsort(-rows, axis=1, kind="stable")[:, :3]
    assert out["shape"] == [100, 3] and out["datatype"] == "BYTES"
    assert out["data"][:3] == [f"{float(rows[0, i]):f}:{i}" for i in top[0]]


@pytest.mark.parametrize("packed", [False, True], ids=["json", "msgpack"])
@pytest.mark.parametrize(
    "shape,data",
    [
        ([4096, 2**40], [[]] * 2_000_000),  # a shape no data can fill, and empty lists
        ([4096, 2**40], [0] * 3_000_000),  # zeros, far fewer than the shape
        ([1, 10], [0] * 3_000_000),  # far more values than the shape
        ([4, 2**20], [[]] * 2_000_000),  # a count within the limit, nested wrong: 2 M lists
        ([1, 1 << 23], [0] * (1 << 23)),  # beyond the data element limit: use binary
    ],
    ids=["huge-shape-empty-lists", "huge-shape-zeros", "more-values", "many-lists", "too-many-elements"],
)
def test_data_is_bounded_by_its_shape_before_it_is_decoded(srv, packed, shape, data):
    """`data` was decoded in full (a Python object per value, 16-32x its bytes) before its
    element count was compared with the shape: 16 MiB took 1.7 GB and 8.7 s of event loop.
    These bodies are 2-17 MB: the server may hold them, and a copy, but no more."""
    server, client = srv
    body = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}
    content = msgspec.msgpack.encode(body) if packed else msgspec.json.encode(body)
    kind = "application/msgpack" if packed else "application/json"
    with _Cost(server) as cost:
        r = client.post(VAR, content=content, headers={"content-type": kind})
    assert r.status_code in (413, 422), (r.status_code, r.text[:300])
    _error(r, r.status_code)
    assert cost.grew_mb < 2.5 * len(content) / MB + 16, (cost.grew_mb, len(content))
    assert cost.seconds < 1.0, cost.seconds
    _still_serves(client)


def test_data_within_its_shape_is_still_decoded_flat_or_nested(srv):
    _, client = srv
    for data in ([1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]):
        for packed in (False, True):
            body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": data}]}
            content = msgspec.msgpack.encode(body) if packed else msgspec.json.encode(body)
            kind = "application/msgpack" if packed else "application/json"
            r = client.post(
                VAR, content=content, headers={"content-type": kind, "accept": "application/json"}
            )
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == [1, 2, 3, 4, 5, 6]
    # nested more deeply than the shape, or ragged: refused with where
    for bad in ([[[1, 2, 3]], [[4, 5, 6]]], [[1, 2], [3, 4, 5, 6]]):
        r = client.post(
            VAR, json={"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": bad}]}
        )
        assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "field,values,datatype",
    [("int64_contents", [1] * 4_000_000, "INT64"), ("fp32_contents", [0.5] * 3_000_000, "FP32"),
     ("bool_contents", [True] * 4_000_000, "FP32")],
)  # fmt: skip
def test_grpc_typed_contents_are_counted_before_they_are_converted(srv, field, values, datatype):
    """Typed contents became a Python list (660 MB for 16 M varints) before the shape or
    even the datatype was checked."""
    server, _ = srv
    request = service_pb2.ModelInferRequest(model_name="var")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1, 4])
    getattr(tensor.contents, field).extend(values)
    with (
        _Cost(server) as cost,
        grpc.insecure_channel(server.grpc, options=[("grpc.max_send_message_length", 64 * MB)]) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
    # What protobuf itself holds for the parsed message is the floor; no list on top of it.
    assert cost.grew_mb < 100, cost.grew_mb


def test_a_dimension_too_long_to_print_is_a_4xx(srv):
    """Python refuses to print an integer of 4,300+ digits: the error message itself was a 500."""
    _, client = srv
    huge = int("9" * 4299)
    for shape in ([4096, huge], [huge, 4], [1, huge]):
        r = client.post(
            VAR, json={"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [1.0]}]}
        )
        assert r.status_code in (413, 422), (r.status_code, r.text[:200])
        body, headers = _binary(
            {
                "inputs": [
                    {"name": "x", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": 4}}
                ]
            },
            b"\0\0\0\0",
        )
        r = client.post(VAR, content=body, headers=headers)
        assert r.status_code in (413, 422), (r.status_code, r.text[:200])
        assert "bits" in r.text


def test_a_graph_failure_names_no_source_path(srv):
    """ONNX Runtime's failure came back with its source file's path. Inputs each valid for
    the signature that the graph cannot combine fail inside a kernel (ORT's FAIL, as
    Triton answers it: 500), with ORT's reason and no path."""
    _, client = srv
    r = client.post("/v2/models/add2/infer", json={"inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "b", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]})  # fmt: skip
    body = _error(r, 500)
    assert "onnxruntime_src" not in r.text and "element_wise_ops" not in r.text, r.text
    assert "running Add node" in body["error"]
    r = client.post("/v2/models/add2/infer", json={"inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})  # fmt: skip
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 4, 6]
