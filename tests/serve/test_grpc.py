"""The V2 protocol over gRPC: real `gateway serve --grpc-port` processes driven by
tritonclient.grpc (sync and aio). Answers equal in-process ONNX Runtime; every error
class has its status code and HTTP's message; deadlines, shedding, SIGTERM and promote
behave as over HTTP, on the same batchers.

This process never imports gateway.proto's generated modules: tritonclient registers
the same `inference.*` message names in protobuf's default pool.

Covers `gateway/grpc/codec.py`, `gateway/grpc/service.py`."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tc_aio
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.artifacts.repository import Repository
from gateway.proto.__main__ import stale
from tests.conftest import ROOT, free_port, start_server

TOKEN = "grpc-admin-token"
# perf_analyzer ships in tritonclient 2.51.0's wheel, in the clients' own venv (.ci/run).
CLIENTS = Path(os.environ.get("GATEWAY_CLIENTS_VENV", ROOT / ".venv-clients"))
PERF_ANALYZER = CLIENTS / "bin" / "perf_analyzer"
FEATURES = 30  # breast_cancer's input: FP64 [-1, 30]


def _client(srv) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(srv.grpc)


def _serve(repo: Path, tmp: Path, *args: str, env: dict[str, str] | None = None):
    port = free_port()
    srv = start_server(repo, tmp, "--grpc-port", str(port), *args, env=env)
    srv.grpc = f"127.0.0.1:{port}"
    return srv


def _input(rows: np.ndarray, name: str = "input", datatype: str = "FP64") -> tc.InferInput:
    tensor = tc.InferInput(name, list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    return tensor


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, FEATURES)) * 3 + 10


def _error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def _samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _count(url: str, **labels: str) -> float:
    samples = _samples(httpx.get(f"{url}/metrics").text)
    return sum(
        s.value for s in samples
        if s.name == "gateway_requests_total" and all(s.labels.get(k) == v for k, v in labels.items())
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(demo_repo):
    repo = Repository(demo_repo)

    def run(name: str, feeds: dict) -> dict:
        manifest, data = repo.load_verified(name, "1")
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        names = [o.name for o in manifest.outputs]
        return dict(zip(names, session.run(names, feeds), strict=True))

    return run


@pytest.fixture(scope="module")
def server(demo_repo, tmp_path_factory):
    srv = _serve(demo_repo, tmp_path_factory.mktemp("grpc"), "--log-level", "warning")
    yield srv
    srv.stop()


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps what it receives."""

    received: list[bytes]

    def do_POST(self) -> None:
        self.received.append(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def slow(demo_repo, tmp_path_factory):
    """Batches wait up to 1 s to fill: a call stays queued long enough to see deadlines.
    A 64-row queue, a 200 kB message limit, 4 calls at once, the admin API, and spans
    sent to a sink."""
    _Sink.received = []
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    env = {
        "GATEWAY_ADMIN_TOKEN": TOKEN,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    srv = _serve(
        demo_repo, tmp_path_factory.mktemp("grpc-slow"), "--max-delay-ms", "1000", "--max-queue-rows", "64",
        "--max-body-bytes", "200000", "--max-concurrency", "4", "--log-format", "json", env=env,
    )  # fmt: skip
    srv.sink = _Sink.received
    yield srv
    srv.stop()
    sink.shutdown()
    sink.server_close()


def test_generated_protobuf_modules_are_current():
    assert stale() == [], "run: python -m gateway.proto"


def test_health_and_metadata_match_http(server):
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("breast_cancer") and client.is_model_ready("diabetes", "1")
    assert _error(lambda: client.is_model_ready("nope")).status() == "StatusCode.NOT_FOUND"
    assert _error(lambda: client.is_model_ready("diabetes", "7")).status() == "StatusCode.NOT_FOUND"
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "onnx-gateway" and "statistics" in meta["extensions"]
    over_http = httpx.get(f"{server.url}/v2/models/breast_cancer").json()
    over_grpc = client.get_model_metadata("breast_cancer", as_json=True)
    assert over_grpc["name"] == "breast_cancer" and over_grpc["platform"] == "onnxruntime_onnx"
    assert over_grpc["versions"] == over_http["versions"]
    for kind in ("inputs", "outputs"):
        got = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in over_grpc[kind]]
        assert got == [(t["name"], t["datatype"], t["shape"]) for t in over_http[kind]]
    config = client.get_model_config("breast_cancer", as_json=True)["config"]
    assert config["max_batch_size"] == 256 and config["input"][0]["data_type"] == "TYPE_FP64"


@pytest.mark.parametrize("rows", [1, 256])
def test_infer_raw_equals_in_process_onnx_runtime(server, reference, rows):
    x = _rows(rows, seed=rows)
    result = _client(server).infer("breast_cancer", [_input(x)], request_id=f"r{rows}")
    want = reference("breast_cancer", {"input": x})
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=1e-12)
    response = result.get_response()
    assert response.id == f"r{rows}" and response.model_version == "1"


def test_requested_outputs_and_typed_contents(server, reference):
    x = _rows(3, seed=7)
    client = _client(server)
    result = client.infer("breast_cancer", [_input(x)], outputs=[tc.InferRequestedOutput("probabilities")])
    assert [o.name for o in result.get_response().outputs] == ["probabilities"]
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), reference("breast_cancer", {"input": x})["probabilities"], rtol=1e-12
    )
    # tritonclient always sends raw bytes; the typed form, built with its own messages:
    request = service_pb2.ModelInferRequest(model_name="diabetes")
    d = np.random.default_rng(1).normal(0, 0.05, (2, 10))
    tensor = request.inputs.add(name="input", datatype="FP64", shape=[2, 10])
    tensor.contents.fp64_contents.extend(d.reshape(-1).tolist())
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], "<f8").reshape(list(response.outputs[0].shape))
    np.testing.assert_allclose(got, reference("diabetes", {"input": d})["value"], rtol=1e-12)


def test_stream_answers_each_request_and_its_errors(server, reference):
    client = _client(server)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    d = np.random.default_rng(4).normal(0, 0.05, (2, 10))
    try:
        for rid, model, rows in (("a", "diabetes", d), ("b", "diabetes", d[:, :3]), ("c", "nope", d)):
            client.async_stream_infer(model, [_input(rows)], request_id=rid)
        got = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    (ok, none), (_, shape), (_, missing) = got
    assert none is None and ok.get_response().id == "a"
    np.testing.assert_allclose(ok.as_numpy("value"), reference("diabetes", {"input": d})["value"], rtol=1e-12)
    assert "has shape [2, 3]" in shape.message()
    assert missing.message().startswith("Request for unknown model: 'nope' is not found")
    assert _count(server.url, route="grpc_stream_infer", code="200") == 1
    # An error names its request, so that a stream's client can tell which one failed.
    request = service_pb2.ModelInferRequest(model_name="nope", id="z")
    with grpc.insecure_channel(server.grpc) as channel:
        (answer,) = list(service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([request])))
    assert answer.infer_response.id == "z" and answer.error_message.startswith("Request for unknown model: 'nope'")


def test_aio_client_concurrent_calls(server, reference):
    x = _rows(40, seed=3)

    async def run() -> list:
        client = tc_aio.InferenceServerClient(server.grpc)
        try:
            assert await client.is_server_ready()
            calls = [client.infer("breast_cancer", [_input(x[i : i + 1])]) for i in range(len(x))]
            return [r.as_numpy("probabilities")[0] for r in await asyncio.gather(*calls)]
        finally:
            await client.close()

    got = np.array(asyncio.run(run()))
    np.testing.assert_allclose(got, reference("breast_cancer", {"input": x})["probabilities"], rtol=1e-12)


def _http_error(server, body: dict) -> str:
    r = httpx.post(f"{server.url}/v2/models/breast_cancer/infer", json=body)
    assert 400 <= r.status_code < 500, r.text
    return r.json()["error"]


def test_errors_have_their_code_and_the_http_message(server):
    client = _client(server)
    x = _rows(1)
    cases = [
        # (gRPC call, its code, the same request over HTTP or None)
        (lambda: client.infer("nope", [_input(x)]), "NOT_FOUND", None),
        (lambda: client.infer("breast_cancer", [_input(x)], model_version="9"), "NOT_FOUND", None),
        (
            lambda: client.infer("breast_cancer", [_input(x.astype(np.float32), datatype="FP32")]),
            "INVALID_ARGUMENT",
            {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": x.ravel().tolist()}]},
        ),
        (
            lambda: client.infer("breast_cancer", [_input(x[:, :5])]),
            "INVALID_ARGUMENT",
            {"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP64", "data": x[:, :5].ravel().tolist()}]},
        ),
        (
            lambda: client.infer("breast_cancer", [_input(x, name="other")]),
            "INVALID_ARGUMENT",
            {"inputs": [{"name": "other", "shape": [1, FEATURES], "datatype": "FP64", "data": x.ravel().tolist()}]},
        ),
        (
            lambda: client.infer("breast_cancer", [_input(np.full((1, FEATURES), np.nan))]),
            "INVALID_ARGUMENT",
            None,
        ),
        (
            lambda: client.infer(
                "breast_cancer", [_input(x)], outputs=[tc.InferRequestedOutput("nothing")]
            ),
            "NOT_FOUND",
            {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP64", "data": x.ravel().tolist()}],
             "outputs": [{"name": "nothing"}]},
        ),
        (lambda: client.infer("breast_cancer", [_input(_rows(4097))]), "RESOURCE_EXHAUSTED", None),
    ]
    for call, code, http_body in cases:
        exc = _error(call)
        assert exc.status() == f"StatusCode.{code}", (code, exc)
        assert "Traceback" not in exc.message() and ".py" not in exc.message()
        if http_body is not None:
            assert exc.message().startswith(_http_error(server, http_body)), exc.message()
    # Typed contents in the wrong field, both forms at once, raw contents that miscount.
    wrong_field = service_pb2.ModelInferRequest(model_name="diabetes")
    wrong_field.inputs.add(name="input", datatype="FP64", shape=[1, 10]).contents.fp32_contents.extend([0.0] * 10)
    both = service_pb2.ModelInferRequest(model_name="diabetes", raw_input_contents=[bytes(80)])
    both.inputs.add(name="input", datatype="FP64", shape=[1, 10]).contents.fp64_contents.extend([0.0] * 10)
    miscounted = service_pb2.ModelInferRequest(model_name="diabetes", raw_input_contents=[bytes(80), bytes(8)])
    miscounted.inputs.add(name="input", datatype="FP64", shape=[1, 10])
    short = service_pb2.ModelInferRequest(model_name="diabetes", raw_input_contents=[bytes(72)])
    short.inputs.add(name="input", datatype="FP64", shape=[1, 10])
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for request, says in (
            (wrong_field, "FP64 data belongs in contents.fp64_contents"),
            (both, "raw_input_contents is given: use one"),
            (miscounted, "raw_input_contents has 2 entries for 1 inputs"),
            (short, "binary tensor size does not match its shape"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in info.value.details()
    with grpc.insecure_channel(server.grpc) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff not a message")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:  # a method we do not serve
            channel.unary_unary("/inference.GRPCInferenceService/CudaSharedMemoryStatus")(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert _count(server.url, route="grpc_infer", code="422") >= 4


def test_deadlines_shedding_and_message_size(slow):
    client = _client(slow)
    one = _input(_rows(1))
    # The V2 timeout parameter (µs) and the client's own gRPC deadline both bound the wait
    # in a batcher that would otherwise hold the call for a second.
    exc = _error(lambda: client.infer("breast_cancer", [one], timeout=1000))
    assert exc.status() == "StatusCode.DEADLINE_EXCEEDED"
    started = time.monotonic()
    exc = _error(lambda: client.infer("breast_cancer", [one], client_timeout=0.3))
    assert exc.status() == "StatusCode.DEADLINE_EXCEEDED" and time.monotonic() - started < 0.9
    # 65 rows never fit a 64-row queue: shed at once, with when to retry.
    with grpc.insecure_channel(slow.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="breast_cancer")
        request.inputs.add(name="input", datatype="FP64", shape=[65, FEATURES])
        request.raw_input_contents.append(_rows(65).astype("<f8").tobytes())
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "queue full" in info.value.details()
    trailers = dict(info.value.trailing_metadata())
    assert trailers["retry-after"] == "1" and trailers["grpc-retry-pushback-ms"] == "1000"
    assert trailers["x-model-version"] == "1" and trailers["x-request-id"]
    # --max-body-bytes bounds a message: 1000 rows are 240 kB
    exc = _error(lambda: client.infer("breast_cancer", [_input(_rows(1000))]))
    assert exc.status() == "StatusCode.RESOURCE_EXHAUSTED"
    # the server records a call a moment after its client gave up on it
    deadline = time.monotonic() + 5
    while _count(slow.url, route="grpc_infer", code="504") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count(slow.url, route="grpc_infer", code="504") == 2
    assert _count(slow.url, route="grpc_infer", code="503") == 1


def test_max_concurrency_bounds_grpc_calls(slow):
    async def run() -> list:
        client = tc_aio.InferenceServerClient(slow.grpc)
        try:  # every call waits in the batcher for up to a second: 8 are in flight at once
            calls = [client.infer("breast_cancer", [_input(_rows(1, seed=i))]) for i in range(8)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    assert refused and all(r.status() == "StatusCode.RESOURCE_EXHAUSTED" for r in refused)
    assert 1 <= len(results) - len(refused) <= 4


def test_traceparent_metrics_and_access_log(slow):
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent}-01", "x-request-id": "grpc-req-1"}
    result = _client(slow).infer("breast_cancer", [_input(_rows(2))], headers=headers)
    assert result.as_numpy("label").shape == (2,)
    assert _count(slow.url, route="grpc_infer", code="200", model="breast_cancer") >= 1
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    deadline = time.monotonic() + 10
    server_span = None
    while server_span is None and time.monotonic() < deadline:
        time.sleep(0.2)
        for body in list(slow.sink):
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                for span in (s for ss in rs.scope_spans for s in ss.spans):
                    attrs = {a.key: a.value.string_value or a.value.int_value for a in span.attributes}
                    if attrs.get("gateway.request_id") == "grpc-req-1":
                        server_span = (span, attrs)
    assert server_span is not None, "no span for the gRPC call"
    span, attrs = server_span
    assert span.trace_id.hex() == trace_id and span.parent_span_id.hex() == parent
    assert attrs["gateway.route"] == "grpc_infer" and attrs["rpc.system"] == "grpc"
    assert attrs["rpc.grpc.status_code"] == 0 and attrs["gateway.rows"] == 2
    lines = [json.loads(line) for line in slow.log().splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("event") == "request" and e.get("request_id") == "grpc-req-1"]
    assert len(access) == 1 and access[0]["route"] == "grpc_infer" and access[0]["trace_id"] == trace_id


def test_repository_extension_needs_the_admin_token(slow, server):
    assert _error(lambda: _client(server).get_model_repository_index()).status() == "StatusCode.PERMISSION_DENIED"
    client = _client(slow)
    assert _error(client.get_model_repository_index).status() == "StatusCode.UNAUTHENTICATED"
    wrong = {"authorization": "Bearer nope"}
    assert _error(lambda: client.unload_model("diabetes", headers=wrong)).status() == "StatusCode.PERMISSION_DENIED"
    auth = {"authorization": f"Bearer {TOKEN}"}
    index = client.get_model_repository_index(headers=auth, as_json=True)["models"]
    assert {(m["name"], m["state"]) for m in index} == {("breast_cancer", "READY"), ("diabetes", "READY")}
    client.unload_model("diabetes", headers=auth)
    assert _error(lambda: client.is_model_ready("diabetes")).status() == "StatusCode.NOT_FOUND"
    client.load_model("diabetes", headers=auth)
    assert client.is_model_ready("diabetes")
    stats = client.get_inference_statistics("breast_cancer", as_json=True)["model_stats"][0]
    assert stats["name"] == "breast_cancer" and int(stats["inference_stats"]["success"]["count"]) >= 1


@pytest.mark.slow
def test_sigterm_drains_grpc_calls_in_flight(demo_repo, tmp_path):
    """Calls queued for up to 2 s when SIGTERM comes are all answered; the server exits 0."""
    srv = _serve(demo_repo, tmp_path, "--max-delay-ms", "2000", "--log-level", "warning")
    x = _rows(16, seed=5)

    async def run() -> tuple[list, object]:
        client = tc_aio.InferenceServerClient(srv.grpc)
        try:
            calls = [
                asyncio.ensure_future(client.infer("breast_cancer", [_input(x[i : i + 1])]))
                for i in range(len(x))
            ]
            async with httpx.AsyncClient() as http:  # all 16 queued in the server: in flight
                for _ in range(100):
                    stats = (await http.get(f"{srv.url}/v2/models/breast_cancer/stats")).json()
                    if stats["model_stats"][0]["queued_rows"] == len(x):
                        break
                    await asyncio.sleep(0.05)
            assert stats["model_stats"][0]["queued_rows"] == len(x), stats
            assert not any(c.done() for c in calls), "answered before SIGTERM: nothing was in flight"
            srv.process.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
            await asyncio.sleep(0.3)
            late = await asyncio.gather(client.infer("breast_cancer", [_input(x[:1])]), return_exceptions=True)
            return results, late[0]
        finally:
            await client.close()

    try:
        results, late = asyncio.run(run())
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors, errors
        assert len(results) == 16
        assert isinstance(late, InferenceServerException) and late.status() == "StatusCode.UNAVAILABLE"
        assert srv.process.wait(30) == 0
    finally:
        srv.stop()


@pytest.mark.slow
def test_promote_under_grpc_load_fails_nothing(demo_repo, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(demo_repo / "diabetes" / "1", root / "diabetes" / "1")
    shutil.copytree(root / "diabetes" / "1", root / "diabetes" / "2")
    manifest = root / "diabetes" / "2" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": "1"', '"version": "2"'))
    Repository(root).set_live("diabetes", "1")
    srv = _serve(root, tmp_path, "--log-level", "warning", env={"GATEWAY_ADMIN_TOKEN": TOKEN})
    x = np.random.default_rng(2).normal(0, 0.05, (1, 10))
    versions: list[str] = []
    failures: list[Exception] = []

    async def load(stop: asyncio.Event) -> None:
        client = tc_aio.InferenceServerClient(srv.grpc)
        try:
            while not stop.is_set():
                try:
                    result = await client.infer("diabetes", [_input(x)])
                    versions.append(result.get_response().model_version)
                except InferenceServerException as exc:
                    failures.append(exc)
        finally:
            await client.close()

    async def run() -> None:
        stop = asyncio.Event()
        workers = [asyncio.create_task(load(stop)) for _ in range(4)]
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(
                f"{srv.url}/admin/models/diabetes/promote", json={"version": "2"},
                headers={"authorization": f"Bearer {TOKEN}"},
            )  # fmt: skip
        assert r.status_code == 200, r.text
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)

    try:
        asyncio.run(run())
        assert not failures, failures[:3]
        assert len(versions) > 100, "too little load to prove anything"
        assert set(versions) == {"1", "2"} and versions[-1] == "2"
    finally:
        srv.stop()


@pytest.mark.slow
def test_every_worker_serves_grpc(demo_repo, tmp_path):
    """With --workers 2 both processes listen on the gRPC port (SO_REUSEPORT); /metrics,
    answered by either, counts the calls both served."""
    srv = _serve(demo_repo, tmp_path, "--workers", "2", "--log-format", "json")

    def started() -> set[int]:
        lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
        return {e["pid"] for e in lines if e.get("event") == "grpc_start"}

    try:
        # /readyz answered from one worker; each listens on gRPC only once its models loaded
        deadline = time.monotonic() + 60
        while len(started()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(started()) == 2
        for i in range(24):  # a fresh connection each time, so the kernel spreads them
            client = _client(srv)
            assert client.infer("breast_cancer", [_input(_rows(1, seed=i))]).as_numpy("label").shape == (1,)
            client.close()
        # Each worker publishes its metrics once a second, and either may answer /metrics:
        # past a second both views are whole; three answers in a row must agree.
        time.sleep(1.5)
        seen: list[float] = []
        deadline = time.monotonic() + 15
        while seen[-3:] != [24, 24, 24] and time.monotonic() < deadline:
            seen.append(_count(srv.url, route="grpc_infer", code="200"))
            time.sleep(0.2)
        assert seen[-3:] == [24, 24, 24], seen
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.skipif(not PERF_ANALYZER.exists(), reason=f"no {PERF_ANALYZER}: `bash .ci/run` installs it")
def test_perf_analyzer_over_grpc(server, tmp_path):
    """Triton's load tool, -i grpc: it reads the model configuration and statistics over
    gRPC, sends raw tensors in batches of 8, and reports the server's own counts."""
    client = _client(server)
    before = client.get_inference_statistics("breast_cancer", as_json=True)["model_stats"][0]
    cudart = next((CLIENTS / "lib").glob("python3*/site-packages/nvidia/cuda_runtime/lib"))
    done = subprocess.run(
        [
            str(PERF_ANALYZER), "-m", "breast_cancer", "-i", "grpc", "-u", server.grpc, "-b", "8",
            "--concurrency-range", "2:2", "--measurement-mode", "count_windows",
            "--measurement-request-count", "100", "-s", "1000", "--max-trials", "3",
            "-f", str(tmp_path / "perf.csv"),
        ],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "LD_LIBRARY_PATH": f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counts = [int(line.split(":")[1]) for line in done.stdout.splitlines() if "Successful request count" in line]
    assert len(counts) == 1 and counts[0] >= 100, done.stdout
    after = client.get_inference_statistics("breast_cancer", as_json=True)["model_stats"][0]
    # proto3 JSON leaves zeros out
    success = [int(x["inference_stats"]["success"].get("count", 0)) for x in (before, after)]
    rows = [int(x.get("inference_count", 0)) for x in (before, after)]
    assert success[1] - success[0] >= counts[0] and rows[1] - rows[0] >= 8 * counts[0]
    assert "Concurrency" in (tmp_path / "perf.csv").read_text()


def test_a_taken_grpc_port_stops_start_up(demo_repo, tmp_path):
    """Readiness covers both servers: without its gRPC port the server never gets ready."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = start_server(demo_repo, tmp_path, "--grpc-port", str(port), wait_ready=False)
        assert srv.process.wait(60) != 0
    assert f"gRPC cannot bind 127.0.0.1:{port}" in srv.log()
