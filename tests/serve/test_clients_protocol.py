"""What the official V2 and Triton clients need from the wire, checked over real HTTP:
the request fields they send, Triton's model configuration and statistics, compressed
bodies both ways, classification, the repository extension's answers, and an access-log
line for every failure. (tests/serve/test_clients_official.py drives the clients themselves.)

Covers `gateway/http/compression.py`, `gateway/http/failures.py`, `gateway/v2/parse.py`,
`gateway/v2/encode.py`, `gateway/v2/triton.py`."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import httpx
import numpy as np
import pytest
from msgspec.structs import replace as msgspec_replace
from sklearn.datasets import load_breast_cancer

from tests.conftest import start_server

TOKEN = "h14-admin-token"
MAX_BODY = 1_000_000


@pytest.fixture(scope="module")
def srv(demo_repo, tmp_path_factory):
    """Access log on (the default level), admin API on, batcher settings of our own."""
    server = start_server(
        demo_repo, tmp_path_factory.mktemp("clients"),
        "--max-batch-rows", "64", "--max-delay-ms", "3", "--max-body-bytes", str(MAX_BODY),
        env={"GATEWAY_ADMIN_TOKEN": TOKEN},
    )  # fmt: skip
    yield server
    server.stop()


def _rows(url: str, n: int) -> dict:
    meta = httpx.get(f"{url}/v2/models/breast_cancer").json()
    (spec,) = meta["inputs"]
    x, _ = load_breast_cancer(return_X_y=True)
    data = x[:n].astype(np.float32 if spec["datatype"] == "FP32" else np.float64)
    return {"name": spec["name"], "shape": [n, 30], "datatype": spec["datatype"], "data": data.ravel().tolist()}


def _infer(url: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/breast_cancer/infer", json=body, **kwargs)


def test_every_protocol_field_and_the_kserve_additions_are_accepted(srv):
    tensor = _rows(srv.url, 2) | {"parameters": {}}
    body = {
        "id": "r1", "parameters": {"priority": 0}, "model_name": "breast_cancer", "model_version": "1",
        "inputs": [tensor], "outputs": [{"name": "label", "parameters": {"binary_data": False}}],
    }  # fmt: skip
    r = _infer(srv.url, body)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "r1" and [o["name"] for o in r.json()["outputs"]] == ["label"]
    assert _infer(srv.url, body | {"model_version": ""}).status_code == 200  # empty: not given


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("model_name", "diabetes", "'diabetes' in the body does not match 'breast_cancer'"),
     ("model_version", "7", "model_version '7' in the body does not match version '1'")],
)  # fmt: skip
def test_a_body_that_names_another_model_is_a_400_that_says_so(srv, field, value, says):
    r = _infer(srv.url, {"inputs": [_rows(srv.url, 1)], field: value})
    assert r.status_code == 400, r.text
    assert says in r.json()["error"] and r.json()["detail"][0]["loc"] == ["body", field]


def test_unknown_fields_stay_refused_with_their_path(srv):
    r = _infer(srv.url, {"inputs": [_rows(srv.url, 1)], "colour": "red"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "colour"]
    r = _infer(srv.url, {"inputs": [_rows(srv.url, 1) | {"colour": 1}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inputs", 0, "colour"]
    r = _infer(srv.url, {"inputs": [_rows(srv.url, 1)], "outputs": [{"name": "label", "colour": 1}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "outputs", 0, "colour"]


def test_model_config_is_tritons_shape_with_our_batcher_settings(srv):
    meta = httpx.get(f"{srv.url}/v2/models/breast_cancer").json()
    for path in ("/v2/models/breast_cancer/config", "/v2/models/breast_cancer/versions/1/config"):
        config = httpx.get(srv.url + path).json()
        assert config["name"] == "breast_cancer" and config["platform"] == "onnxruntime_onnx"
        assert config["max_batch_size"] == 64
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 3000
        assert config["version_policy"] == {"specific": {"versions": ["1"]}}
        (inp,) = config["input"]
        assert inp["name"] == meta["inputs"][0]["name"]
        assert inp["data_type"] == "TYPE_" + meta["inputs"][0]["datatype"] and inp["dims"] == [30]
        outputs = {o["name"]: o for o in config["output"]}
        assert outputs["probabilities"]["dims"] == [2]
        assert outputs["label"]["dims"] == [1] and outputs["label"]["reshape"] == {"shape": []}
    assert httpx.get(f"{srv.url}/v2/models/nope/config").status_code == 404
    assert httpx.get(f"{srv.url}/v2/models/breast_cancer/versions/9/config").status_code == 404


def _stats(url: str, path: str = "/v2/models/breast_cancer/stats") -> dict:
    r = httpx.get(url + path)
    assert r.status_code == 200, r.text
    (entry,) = [s for s in r.json()["model_stats"] if s["name"] == "breast_cancer"]
    return entry


def test_statistics_are_measured_per_request_and_per_batch(srv):
    before = _stats(srv.url)
    for n in (1, 3, 5):
        assert _infer(srv.url, {"inputs": [_rows(srv.url, n)]}).status_code == 200
    bad = _rows(srv.url, 1) | {"shape": [1, 29]}
    bad["data"] = bad["data"][:29]
    assert _infer(srv.url, {"inputs": [bad]}).status_code == 422
    after = _stats(srv.url)
    inference = {k: (after["inference_stats"][k]["count"] - before["inference_stats"][k]["count"],
                     after["inference_stats"][k]["ns"] - before["inference_stats"][k]["ns"])
                 for k in after["inference_stats"]}  # fmt: skip
    assert after["inference_count"] - before["inference_count"] == 9  # rows, as Triton counts
    assert after["execution_count"] - before["execution_count"] == 3
    assert inference["success"][0] == 3 and inference["fail"][0] == 1
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[phase][0] == 3, phase  # only requests that reached the model
    assert inference["compute_infer"][1] > 0 and inference["success"][1] > inference["compute_infer"][1]
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 1e12
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert {1, 3, 5} <= set(sizes)
    assert sum(sizes.values()) == after["execution_count"]


def test_all_models_statistics_is_not_a_model_called_stats(srv):
    r = httpx.get(f"{srv.url}/v2/models/stats")
    assert r.status_code == 200, r.text
    assert {s["name"] for s in r.json()["model_stats"]} == {"breast_cancer", "diabetes"}
    assert _stats(srv.url, "/v2/models/breast_cancer/versions/1/stats")["version"] == "1"
    assert httpx.get(f"{srv.url}/v2/models/nope/stats").status_code == 404


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_bodies_are_inflated(srv, encoding):
    body = json.dumps({"inputs": [_rows(srv.url, 4)]}).encode()
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    headers = {"content-encoding": encoding, "content-type": "application/json"}
    r = httpx.post(f"{srv.url}/v2/models/breast_cancer/infer", content=packed, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == _infer(srv.url, json.loads(body)).json()["outputs"]


def test_bad_compressed_bodies_are_refused(srv):
    url = f"{srv.url}/v2/models/breast_cancer/infer"
    body = json.dumps({"inputs": [_rows(srv.url, 1)]}).encode()
    r = httpx.post(url, content=body, headers={"content-encoding": "br"})
    assert r.status_code == 415 and "gzip or deflate" in r.json()["error"]
    r = httpx.post(url, content=gzip.compress(body)[:-12], headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and "truncated" in r.json()["error"]
    r = httpx.post(url, content=b"not gzip at all", headers={"content-encoding": "gzip"})
    assert r.status_code == 400


def test_a_zip_bomb_is_refused_without_inflating_it():
    from gateway.errors import TooLarge
    from gateway.http.compression import decode_body

    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB in ~65 kB
    assert len(bomb) < MAX_BODY
    started = time.perf_counter()
    zlib.decompressobj(31).decompress(bomb)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    with pytest.raises(TooLarge, match="inflates beyond the 1000000-byte limit"):
        decode_body(bomb, b"gzip", MAX_BODY)
    # Stopping at the limit (1 MB of the 64) is a small fraction of inflating it all.
    assert time.perf_counter() - started < whole / 4


def test_a_zip_bomb_over_http_is_a_413(srv):
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    r = httpx.post(
        f"{srv.url}/v2/models/breast_cancer/infer", content=bomb, headers={"content-encoding": "gzip"}
    )
    assert r.status_code == 413 and "inflates beyond" in r.json()["error"]


def test_responses_are_compressed_when_asked_and_worth_it(srv):
    big = {"inputs": [_rows(srv.url, 100)]}
    plain = _infer(srv.url, big, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    for encoding in ("gzip", "deflate"):
        with httpx.stream(
            "POST", f"{srv.url}/v2/models/breast_cancer/infer", json=big,
            headers={"accept-encoding": encoding},
        ) as r:  # fmt: skip
            raw = r.read()  # httpx decodes; the header says what was on the wire
            assert r.headers["content-encoding"] == encoding and r.headers["vary"] == "accept-encoding"
            assert int(r.headers["content-length"]) < len(raw) / 2
        assert json.loads(raw) == plain.json()
    small = _infer(srv.url, {"inputs": [_rows(srv.url, 1)]}, headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers  # under 1 kB: not worth it
    refused = _infer(srv.url, big, headers={"accept-encoding": "gzip;q=0, br"})
    assert "content-encoding" not in refused.headers


@pytest.mark.parametrize("key", ["classification", "class_count"])  # Triton's wire name, its clients'
def test_classification_returns_tritons_score_index_label_strings(srv, key):
    rows = _rows(srv.url, 6)
    probabilities = np.array(
        next(o for o in _infer(srv.url, {"inputs": [rows]}).json()["outputs"] if o["name"] == "probabilities")[
            "data"
        ]
    ).reshape(6, 2)
    body = {"inputs": [rows], "outputs": [{"name": "probabilities", "parameters": {key: 2}}]}
    r = _infer(srv.url, body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["datatype"] == "BYTES" and out["shape"] == [6, 2]
    for i, (first, second) in enumerate(np.array(out["data"]).reshape(6, 2)):
        score, index, label = first.split(":")
        best = int(np.argmax(probabilities[i]))
        assert int(index) == best and label == str(best)  # the demo's classes are 0 and 1
        assert float(score) == pytest.approx(probabilities[i, best], abs=1e-6)
        assert float(second.split(":")[0]) <= float(score)
    bad = {"inputs": [rows], "outputs": [{"name": "probabilities", "parameters": {key: 0}}]}
    r = _infer(srv.url, bad)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "outputs", 0, "parameters", key]


def test_repository_extension_is_listed_with_the_admin_api_and_explained_without(srv, server):
    assert "model_repository" in httpx.get(f"{srv.url}/v2").json()["extensions"]
    auth = {"authorization": f"Bearer {TOKEN}"}
    index = httpx.post(f"{srv.url}/v2/repository/index", headers=auth)
    assert index.status_code == 200 and {"name": "breast_cancer", "version": "1", "state": "READY"} in index.json()
    assert "model_repository" not in httpx.get(f"{server.url}/v2").json()["extensions"]
    for path in ("/v2/repository/index", "/v2/repository/models/diabetes/load"):
        r = httpx.post(server.url + path)
        assert r.status_code == 403 and "GATEWAY_ADMIN_TOKEN" in r.json()["error"], r.text


def test_every_failure_on_any_route_is_in_the_access_log(srv):
    calls = [
        ("GET", "/v2/models/nope/config", 404, "/v2/models/{name}/config"),
        ("GET", "/no/such/route", 404, "unmatched"),
        ("DELETE", "/v2/health/ready", 405, "/v2/health/ready"),
        ("POST", "/v2/repository/index", 401, "/v2/repository/index"),
        ("POST", "/v2/models/breast_cancer/infer", 400, "infer"),
    ]
    for i, (method, path, status, _) in enumerate(calls):
        r = httpx.request(method, srv.url + path, content=b"{", headers={"x-request-id": f"h14-{i}"})
        assert r.status_code == status, (path, r.text)
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in srv.log().splitlines() if x.startswith("{")]
        logged = {e.get("request_id"): e for e in lines if e.get("event") == "request"}
        if all(f"h14-{i}" in logged for i in range(len(calls))):
            break
        time.sleep(0.1)
    for i, (_, _, status, route) in enumerate(calls):
        entry = logged[f"h14-{i}"]
        assert entry["status"] == status and entry["route"] == route and entry["error"], entry
    assert not any(e.get("route") == "/v2/health/ready" and e["status"] == 200 for e in lines)


def test_model_config_of_an_unbatched_model_and_a_bytes_tensor():
    """A fixed first dimension is not a batch: max_batch_size 0, whole shapes, no scheduler;
    BYTES is Triton's TYPE_STRING."""
    from gateway.artifacts.manifest import TensorSpec
    from gateway.v2.triton import Scheduling, model_config
    from tests.artifacts.test_repository import manifest

    scheduling = Scheduling(32, 0.0, 100, 2, 5000.0, "cuda")
    fixed = msgspec_replace(
        manifest(), inputs=[TensorSpec(name="text", datatype="BYTES", shape=[4, -1])],
        outputs=[TensorSpec(name="score", datatype="FP16", shape=[4, 3])],
    )  # fmt: skip
    config = model_config(fixed, ["1", "2"], scheduling)
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0]["data_type"] == "TYPE_STRING" and config["input"][0]["dims"] == [4, -1]
    assert config["output"][0] == {"name": "score", "data_type": "TYPE_FP16", "dims": [4, 3],
                                   "is_shape_tensor": False, "label_filename": ""}  # fmt: skip
    assert config["instance_group"][0]["kind"] == "KIND_GPU" and config["instance_group"][0]["count"] == 2
    batched = model_config(manifest(), ["1"], scheduling)
    assert batched["max_batch_size"] == 32 and batched["input"][0]["dims"] == [2]
    queue = batched["dynamic_batching"]["default_queue_policy"]
    assert queue["default_timeout_microseconds"] == 5_000_000 and queue["max_queue_size"] == 100


def test_a_large_response_is_deflated_off_the_event_loop():
    """zlib lets go of the GIL: a 24 MB answer's deflate runs in a thread while the loop
    keeps serving (on the loop it stalled every other request for 0.6-2 s)."""
    import asyncio
    import gzip
    import os

    from gateway.http import compression

    body = os.urandom(8 * 1024 * 1024) * 3

    async def main() -> tuple[bytes, bytes | None, float]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        out, encoding = await compression.encode_response(body, b"gzip")
        took = time.perf_counter() - started
        done.set()
        await task
        assert took > 0.1, took  # long enough that a stall would show
        return out, encoding, max(gaps)

    out, encoding, worst = asyncio.run(main())
    assert encoding == b"gzip" and gzip.decompress(out) == body
    assert worst < 0.08, worst
