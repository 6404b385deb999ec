"""One clipping rule for client text, and log lines no client can forge.

Whatever a client sends (a path, a model name, a tensor name) comes back in an error body,
a gRPC status and the access log clipped to the same bound, and a text log line shows
control characters as escapes: a request cannot start a line of its own, nor send a
terminal escape sequence to whoever reads the log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.errors import MESSAGE_LIMIT
from tests.conftest import Server, free_port, start_server

# A 404 whose path, percent-decoded, would be a second log line saying that version 666
# went live, then a terminal escape that clears the screen.
FORGED_PATH = "/x%0a21:00:00%09INFO%09%09switched%09model=diabetes%09version=666%1b[2J"
HUGE = 8 * 1024 * 1024  # characters of a client's name over gRPC
HUGE_BODY = 2_000_000  # over HTTP: as much as the diabetes model's body limit (2.6 MB) lets in
LINE_LIMIT = 4 * MESSAGE_LIMIT  # no log line quotes more than a few clipped strings


def _serve(repo: Path, tmp: Path, fmt: str) -> Server:
    port = free_port()
    srv = start_server(repo, tmp, "--log-format", fmt, "--grpc-port", str(port), "--log-level", "info")
    srv.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    return srv


@pytest.fixture(scope="module", params=["text", "json"])
def server(request, demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _serve(demo_repo, tmp_path_factory.mktemp(f"clip-{request.param}"), request.param)
    srv.format = request.param  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def _log_after(srv: Server, marker: str) -> str:
    """The server's log once the line for the request with id `marker` is in it (the JSON
    access log is written every 100 ms, off the event loop)."""
    deadline = time.monotonic() + 10
    while marker not in (text := srv.log()):
        assert time.monotonic() < deadline, f"no log line for {marker}:\n{text[-2000:]}"
        time.sleep(0.05)
    return text


def _assert_lines_bounded(srv: Server, text: str) -> None:
    for line in text.splitlines():
        assert len(line) <= LINE_LIMIT, f"a log line of {len(line)} characters: {line[:200]}..."
        if srv.format == "json":  # type: ignore[attr-defined]
            orjson.loads(line)  # every line one JSON object: none split, none forged


def test_a_404_path_cannot_forge_a_log_line_or_send_terminal_escapes(server):
    r = httpx.get(server.url + FORGED_PATH, headers={"x-request-id": "forged-path"})
    assert r.status_code == 404
    text = _log_after(server, "forged-path")
    assert "\x1b" not in text and "\t" not in text
    assert not any(line.startswith("21:00:00") for line in text.splitlines()), text[-2000:]
    (line,) = [line for line in text.splitlines() if "forged-path" in line]
    if server.format == "json":
        assert (
            orjson.loads(line)["path"] == "/x\n21:00:00\tINFO\t\tswitched\tmodel=diabetes\tversion=666\x1b[2J"
        )
    else:
        assert "\\n21:00:00\\tINFO" in line and "\\x1b[2J" in line
    _assert_lines_bounded(server, text)


def test_a_2mb_model_name_in_an_http_v2_body_is_clipped_in_the_answer_and_the_log(server):
    body = {"model_name": "m" * HUGE_BODY, "inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64",
                                                  "data": [0.0] * 10}]}  # fmt: skip
    r = httpx.post(
        f"{server.url}/v2/models/diabetes/infer", content=orjson.dumps(body),
        headers={"content-type": "application/json", "x-request-id": "huge-v2-name"}, timeout=60,
    )  # fmt: skip
    assert r.status_code == 400, r.text[:300]
    assert len(r.content) < 2 * MESSAGE_LIMIT and "model_name" in r.json()["error"]
    _assert_lines_bounded(server, _log_after(server, "huge-v2-name"))


@pytest.mark.parametrize("where", ["model_name", "tensor_name"])
def test_an_8mb_name_over_grpc_is_clipped_in_the_status_and_the_log(server, where):
    model = "m" * HUGE if where == "model_name" else "diabetes"
    request = service_pb2.ModelInferRequest(model_name=model, id=f"huge-grpc-{where}")
    tensor = request.inputs.add(name="n" * HUGE if where == "tensor_name" else "input", datatype="FP64")
    tensor.shape.extend([1, 10])
    tensor.contents.fp64_contents.extend([0.0] * 10)
    options = [("grpc.max_send_message_length", 4 * HUGE)]
    with grpc.insecure_channel(server.grpc, options=options) as channel:  # type: ignore[attr-defined]
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=60, metadata=[("x-request-id", f"huge-grpc-{where}")])
    error = info.value
    assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), error
    assert 0 < len(error.details()) <= MESSAGE_LIMIT + 3, error.details()[:300]
    _assert_lines_bounded(server, _log_after(server, f"huge-grpc-{where}"))
