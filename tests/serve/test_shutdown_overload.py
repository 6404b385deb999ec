"""Shutdown, overload and provider fallback against real server processes."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections import Counter

import grpc
import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier

from benchmarks.servers import rss_mb
from converters import convert
from tests.conftest import free_port, start_server


@pytest.fixture(scope="module")
def forest_repo(tmp_path_factory):
    """A 300-tree forest: slow enough per row that queues really form."""
    tmp = tmp_path_factory.mktemp("forest")
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x.columns = [c.replace(" ", "_") for c in x.columns]
    model = RandomForestClassifier(n_estimators=300, random_state=0, n_jobs=1).fit(x, y)
    joblib.dump(model, tmp / "forest.joblib")
    convert(tmp / "forest.joblib", name="forest", version="1", repo=tmp / "repo", sample=x)
    return tmp / "repo", x


def _rows(x, n):
    return {"instances": x.sample(n, replace=True, random_state=1).to_dict(orient="records")}


def _burst_in_thread(url: str, body: dict, count: int, results: list) -> threading.Thread:
    async def run() -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=count), timeout=60) as client:

            async def one() -> tuple[int, dict, float]:
                started = time.perf_counter()
                r = await client.post(url, json=body)
                return r.status_code, dict(r.headers), time.perf_counter() - started

            results.extend(await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True))

    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    return thread


def test_sigterm_with_requests_in_flight_loses_none(forest_repo, tmp_path):
    repo, x = forest_repo
    srv = start_server(repo, tmp_path, "--max-batch-rows", "256", "--max-queue-rows", "200000")
    body = _rows(x, 2048)
    results: list = []
    thread = _burst_in_thread(f"{srv.url}/v1/models/forest/predict", body, 24, results)
    deadline = time.monotonic() + 30
    queued = 0
    while time.monotonic() < deadline and queued < 2048 * 16:
        queued = httpx.get(f"{srv.url}/v2/models/forest/stats").json()["model_stats"][0]["queued_rows"]
        time.sleep(0.005)
    assert queued >= 2048 * 16, "the burst never queued up; the test proves nothing"
    srv.process.send_signal(signal.SIGTERM)
    thread.join(60)
    rc = srv.process.wait(30)
    statuses = [r[0] if isinstance(r, tuple) else repr(r) for r in results]
    assert statuses == [200] * 24, statuses
    assert rc == 0  # a clean drain is a clean exit (uvicorn's re-raised signal is swallowed)
    assert "shutdown complete" in srv.log()


def test_overload_sheds_fast_with_retry_after_and_recovers(forest_repo, tmp_path):
    repo, x = forest_repo
    srv = start_server(
        repo,
        tmp_path,
        "--max-batch-rows",
        "256",
        "--max-queue-rows",
        "512",
        "--timeout-ms",
        "3000",
        "--log-level",
        "warning",
    )
    try:
        rss_before = rss_mb(srv.process.pid)
        results: list = []
        _burst_in_thread(f"{srv.url}/v1/models/forest/predict", _rows(x, 256), 48, results).join(120)
        rss_after = rss_mb(srv.process.pid)
        assert rss_after - rss_before < 150, (rss_before, rss_after)  # the queue bound holds memory too
        statuses = [r[0] for r in results]
        assert set(statuses) <= {200, 503}, statuses
        shed = [r for r in results if r[0] == 503]
        assert shed, "a 3x oversubscribed queue never shed"
        assert all(r[1].get("retry-after") for r in shed)
        assert statuses.count(200) >= 2
        # refusals are immediate: far quicker than the accepted requests that waited
        assert np.median([r[2] for r in shed]) < np.median([r[2] for r in results if r[0] == 200])
        assert max(r[2] for r in results if r[0] == 200) < 3.5  # accepted ones within the deadline
        ok = httpx.post(f"{srv.url}/v1/models/forest/predict", json=_rows(x, 8))
        assert ok.status_code == 200
    finally:
        srv.stop()


def test_corrupt_artifact_is_not_loaded_and_server_stays_up(demo_repo, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(demo_repo, repo)
    (repo / "diabetes" / "1" / "model.onnx").write_bytes(b"not the model that was verified")
    srv = start_server(repo, tmp_path, wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{srv.url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        ready = httpx.get(f"{srv.url}/readyz")
        assert ready.status_code == 503  # issue 16 M7: ready only when every model serves
        assert "sha256" in ready.json()["failures"]["diabetes"]
        assert ready.json()["not_served"] == ["diabetes"]
        assert httpx.post(f"{srv.url}/v1/models/diabetes/predict", json={}).status_code == 404
        good = httpx.post(
            f"{srv.url}/v1/models/breast_cancer/predict", json=dict.fromkeys(_bc_features(repo), 0.0)
        )
        assert good.status_code == 200
        assert "load_failed" in srv.log()
    finally:
        srv.stop()


def test_unreadable_serving_json_fails_only_its_model(demo_repo, tmp_path):
    """One model's corrupt serving.json is that model's failure, not the server's: the
    others start and serve."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(demo_repo, repo)
    (repo / "diabetes" / "serving.json").write_text("{not json")
    srv = start_server(repo, tmp_path, "--log-level", "warning", wait_ready=False)
    try:
        assert wait_for_live(srv.url)
        ready = httpx.get(f"{srv.url}/readyz")
        assert ready.status_code == 503  # issue 16 M7: ready only when every model serves
        assert "unreadable" in ready.json()["failures"]["diabetes"]
        good = httpx.post(
            f"{srv.url}/v1/models/breast_cancer/predict", json=dict.fromkeys(_bc_features(repo), 0.0)
        )
        assert good.status_code == 200
    finally:
        srv.stop()


def wait_for_live(url: str, timeout: float = 60) -> bool:
    """The server answers (its lifespan finished loading): /readyz has a body to read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "models" in httpx.get(f"{url}/readyz").json():
                return True
        except httpx.HTTPError:
            time.sleep(0.1)
    return False


def _bc_features(repo):
    from gateway.artifacts.repository import Repository

    return [f.name for f in Repository(repo).manifest("breast_cancer", "1").features]


def test_bad_setting_is_a_clear_startup_error(demo_repo, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--repo", str(demo_repo), "--max-batch-rows", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "max_batch_rows" in result.stderr and ">= 1" in result.stderr


def test_startup_leaves_long_lived_objects_out_of_the_collectors_walk(demo_repo):
    """A full collection walking every module and session object stalls the event loop for
    milliseconds; once serving, what was built at startup is frozen out of its sight."""
    import gc

    from gateway.app import create_app
    from gateway.settings import build_settings
    from tests.conftest import InProcessServer

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    settings = build_settings({"repo": str(demo_repo), "log_level": "warning", "metrics": False}, {})
    try:
        with InProcessServer(create_app(settings)) as url:
            assert httpx.get(f"{url}/readyz").status_code == 200
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def _grpc_infer(port: int, rows: int, timeout: float) -> object:
    """A ModelInfer of `rows` demo rows: its answer, or the RpcError that ended it."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="breast_cancer")
    request.inputs.add(name="input", datatype="FP64", shape=[rows, 30])
    request.raw_input_contents.append(np.zeros((rows, 30), "<f8").tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout)
        except grpc.RpcError as exc:
            return exc


@pytest.mark.slow
def test_g7_one_drain_for_both_doors_and_grpc_refuses_from_sigterm(demo_repo, tmp_path):
    """A call of each door waits 8 s in the batcher when SIGTERM comes, with a 2 s drain:
    the process exits 2 s later, not 2 s of HTTP drain and then 2 s of gRPC drain; a call
    made after SIGTERM on either door is refused with its retryable status (UNAVAILABLE +
    pushback; 503 + Retry-After + close on a new connection, not a TCP refusal), not
    accepted into the drain."""
    grpc_port = free_port()
    srv = start_server(
        demo_repo, tmp_path, "--grpc-port", str(grpc_port), "--max-delay-ms", "8000",
        "--log-level", "warning", env={"GATEWAY_DRAIN_SECONDS": "2"},
    )  # fmt: skip
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": [0.0] * 30}]}
    held: list = []
    threads = [
        threading.Thread(target=lambda: held.append(_grpc_infer(grpc_port, 1, 20))),
        threading.Thread(
            target=lambda: held.append(_post_quietly(f"{srv.url}/v2/models/breast_cancer/infer", body))
        ),
    ]
    try:
        for thread in threads:
            thread.start()
        deadline, queued = time.monotonic() + 10, 0
        while queued < 2 and time.monotonic() < deadline:
            queued = httpx.get(f"{srv.url}/v2/models/breast_cancer/stats").json()["model_stats"][0][
                "queued_rows"
            ]
            time.sleep(0.05)
        assert queued == 2, "the two calls never waited in the batcher; the test proves nothing"
        started = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        asked = time.monotonic()
        late = _grpc_infer(grpc_port, 1, 5)
        assert getattr(late, "code", lambda: None)() == grpc.StatusCode.UNAVAILABLE, late
        assert ("grpc-retry-pushback-ms", "1000") in late.trailing_metadata()  # type: ignore[attr-defined]
        assert time.monotonic() - asked < 1, "the late call was taken into the drain, not refused"
        asked = time.monotonic()
        late_http = httpx.post(f"{srv.url}/v2/models/breast_cancer/infer", json=body, timeout=5)
        assert late_http.status_code == 503, late_http.text
        assert late_http.headers["retry-after"] == "1"
        assert late_http.headers["connection"] == "close"
        assert time.monotonic() - asked < 1, "the late request was taken into the drain, not refused"
        srv.process.wait(20)
        took = time.monotonic() - started
        assert took < 2 + 1.5, f"exit {took:.1f} s after SIGTERM with a 2 s drain"
    finally:
        for thread in threads:
            thread.join(20)
        srv.stop()


def _post_quietly(url: str, body: dict) -> object:
    try:
        return httpx.post(url, json=body, timeout=20).status_code
    except httpx.HTTPError as exc:
        return exc


@pytest.mark.slow
def test_g6_sigterm_under_grpc_load_cancels_no_call(demo_repo, tmp_path):
    """200 calls of 4,096 rows, SIGTERM 300 ms after they were sent: every call is answered,
    OK or UNAVAILABLE (retryable, nothing done); none is CANCELLED, which a client cannot
    tell from a call that was half done; every OK has its access-log line."""
    grpc_port = free_port()
    srv = start_server(
        demo_repo, tmp_path, "--grpc-port", str(grpc_port), "--max-queue-rows", "1000000",
        "--max-body-bytes", str(2 * 1024 * 1024), "--log-format", "json",
        env={"GATEWAY_DRAIN_SECONDS": "20"},
    )  # fmt: skip
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="breast_cancer")
    request.inputs.add(name="input", datatype="FP64", shape=[4096, 30])
    request.raw_input_contents.append(
        np.random.default_rng(0).normal(size=(4096, 30)).astype("<f8").tobytes()
    )

    async def run() -> list[str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def one() -> str:
                try:
                    await stub.ModelInfer(request, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name
                return "OK"

            calls = [asyncio.ensure_future(one()) for _ in range(200)]
            await asyncio.sleep(0.3)
            srv.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*calls)

    try:
        codes = asyncio.run(run())
        assert srv.process.wait(30) == 0
        assert "CANCELLED" not in codes and set(codes) <= {"OK", "UNAVAILABLE"}, Counter(codes)
        assert codes.count("OK") >= 1, "SIGTERM came before any call was taken: the test proves nothing"
        events = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
        logged = [e for e in events if e.get("event") == "request" and e.get("status") == 200]
        assert len(logged) == codes.count("OK")
    finally:
        srv.stop()


def _read_answers(sock: socket.socket, expected: int, timeout: float) -> tuple[list[int], str | None]:
    """The statuses of up to `expected` answers on a socket, and how it ended early if it did."""
    sock.settimeout(timeout)
    data = b""
    while data.count(b"HTTP/1.1 ") < expected:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return _statuses(data), "reset"
        except TimeoutError:
            return _statuses(data), "timeout"
        if not chunk:
            return _statuses(data), "closed"
        data += chunk
    return _statuses(data), None


def _statuses(data: bytes) -> list[int]:
    return [int(part[:3]) for part in data.split(b"HTTP/1.1 ")[1:]]


@pytest.mark.slow
def test_g6_sigterm_answers_every_http_request_already_sent(demo_repo, tmp_path):
    """50 keep-alive connections each write 20 one-row requests whole, then SIGTERM at
    once: all 1,000 are answered, none reset (uvicorn closed idle connections over the
    requests still in their socket buffers)."""
    srv = start_server(demo_repo, tmp_path, "--log-level", "warning", env={"GATEWAY_DRAIN_SECONDS": "20"})
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": [0.5] * 30}]}
    )
    request = (
        f"POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    port = int(srv.url.rsplit(":", 1)[1])
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(50)]
    try:
        for sock in sockets:
            sock.sendall(request * 20)
        srv.process.send_signal(signal.SIGTERM)
        outcomes = [_read_answers(sock, 20, 20) for sock in sockets]
        early = [how for _, how in outcomes if how is not None]
        statuses = Counter(status for answers, _ in outcomes for status in answers)
        assert not early and statuses == {200: 1000}, (Counter(early), statuses)
        assert srv.process.wait(30) == 0
    finally:
        for sock in sockets:
            sock.close()
        srv.stop()
