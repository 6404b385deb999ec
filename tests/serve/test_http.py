"""Real `gateway serve` processes on loopback: answers equal in-process ONNX Runtime,
every error class maps to its status with a JSON body, and batching really happens.

Covers `gateway/app.py`, `gateway/http/asgi.py`, `gateway/http/endpoints.py`,
`gateway/http/hotpath.py`, `gateway/types.py`."""

from __future__ import annotations

import asyncio
import struct

import httpx
import msgspec
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from gateway.artifacts.repository import Repository
from tests.conftest import start_server


def _frames():
    x, _ = load_breast_cancer(return_X_y=True, as_frame=True)
    x.columns = [c.replace(" ", "_") for c in x.columns]
    d, _ = load_diabetes(return_X_y=True, as_frame=True)
    return x, d


@pytest.fixture(scope="module")
def reference(demo_repo):
    """In-process ONNX Runtime on the same artifacts: the numbers the server must return."""
    repo = Repository(demo_repo)

    def run(name: str, feeds: dict) -> dict:
        manifest, data = repo.load_verified(name, "1")
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        names = [o.name for o in manifest.outputs]
        return dict(zip(names, session.run(names, feeds), strict=True))

    return run


def test_records_single_and_batch_match_in_process(server, reference):
    x, d = _frames()
    records = x.iloc[:20].to_dict(orient="records")
    r = httpx.post(f"{server.url}/v1/models/breast_cancer/predict", json={"instances": records})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "breast_cancer" and body["version"] == "1"
    assert r.headers["x-model-version"] == "1" and r.headers["x-request-id"]
    expected = reference("breast_cancer", {"input": x.iloc[:20].to_numpy(np.float64)})
    assert [p["label"] for p in body["predictions"]] == expected["label"].tolist()
    got = np.array([[p["probabilities"]["0"], p["probabilities"]["1"]] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected["probabilities"], rtol=1e-6)

    one = httpx.post(f"{server.url}/v1/models/diabetes/predict", json=d.iloc[0].to_dict())
    assert one.status_code == 200
    want = reference("diabetes", {"input": d.iloc[:1].to_numpy(np.float64)})
    assert one.json()["predictions"][0]["value"] == pytest.approx(float(want["value"][0, 0]), rel=1e-6)


def test_explicit_version_path_and_request_id_echo(server):
    _, d = _frames()
    r = httpx.post(
        f"{server.url}/v1/models/diabetes/versions/1/predict",
        json=d.iloc[0].to_dict(),
        headers={"x-request-id": "trace-me-42"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-me-42"


def test_msgpack_in_and_out(server):
    _, d = _frames()
    body = msgspec.msgpack.encode({"instances": d.iloc[:3].to_dict(orient="records")})
    r = httpx.post(
        f"{server.url}/v1/models/diabetes/predict",
        content=body,
        headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    assert len(msgspec.msgpack.decode(r.content)["predictions"]) == 3


def test_v2_json_matches_in_process(server, reference):
    x, _ = _frames()
    data = x.iloc[:5].to_numpy(np.float64)
    r = httpx.post(
        f"{server.url}/v2/models/breast_cancer/infer",
        json={
            "id": "req-1",
            "inputs": [{"name": "input", "shape": [5, 30], "datatype": "FP64", "data": data.tolist()}],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == "breast_cancer" and body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    expected = reference("breast_cancer", {"input": data})
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [5]
    assert outputs["label"]["data"] == expected["label"].tolist()
    assert outputs["probabilities"]["shape"] == [5, 2]
    np.testing.assert_allclose(outputs["probabilities"]["data"], expected["probabilities"].ravel(), rtol=1e-6)


def test_v2_binary_tensors_round_trip(server, reference):
    x, _ = _frames()
    data = np.ascontiguousarray(x.iloc[:7].to_numpy(np.float64))
    header = msgspec.json.encode(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [7, 30],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": data.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    r = httpx.post(
        f"{server.url}/v2/models/breast_cancer/infer",
        content=header + data.tobytes(),
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = msgspec.json.decode(r.content[:n])
    (out,) = meta["outputs"]
    assert out["name"] == "probabilities" and out["shape"] == [7, 2]
    got = np.frombuffer(r.content[n : n + out["parameters"]["binary_data_size"]], dtype="<f8").reshape(7, 2)
    np.testing.assert_allclose(got, reference("breast_cancer", {"input": data})["probabilities"], rtol=1e-6)


def test_v2_metadata_health_and_openapi(server):
    meta = httpx.get(f"{server.url}/v2").json()
    assert "binary_tensor_data" in meta["extensions"]
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    model = httpx.get(f"{server.url}/v2/models/breast_cancer").json()
    assert model["platform"] == "onnxruntime_onnx" and model["inputs"][0]["shape"] == [-1, 30]
    assert model["parameters"]["provider"] == "cpu"
    assert httpx.get(f"{server.url}/v2/models/breast_cancer/versions/1/ready").json()["ready"] is True
    assert httpx.get(f"{server.url}/healthz").json() == {"live": True}
    assert httpx.get(f"{server.url}/readyz").json()["ready"] is True
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert "/v1/models/diabetes/predict" in spec["paths"]
    record = spec["components"]["schemas"]["diabetes_record"]
    assert set(record["required"]) == {"age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"}
    assert "<table>" in httpx.get(f"{server.url}/docs").text


ERROR_CASES = [
    # (description, method, path, kwargs, status, loc)
    ("malformed json", "POST", "/v1/models/diabetes/predict", {"content": b"{not json"}, 400, None),
    (
        "truncated json",
        "POST",
        "/v1/models/diabetes/predict",
        {"content": b'{"instances": [{"age": 1'},
        400,
        None,
    ),
    ("non-utf8 key", "POST", "/v1/models/diabetes/predict", {"content": b'{"\xff\xfe": 1}'}, 400, None),
    ("non-utf8 value", "POST", "/v1/models/diabetes/predict", {"content": b'{"age": "\xff\xfe"}'}, 422, None),
    ("non-utf8 v2", "POST", "/v2/models/diabetes/infer", {"content": b'{"\xff": 1}'}, 400, None),
    ("unknown model", "POST", "/v1/models/nope/predict", {"json": {}}, 404, None),
    ("unknown version", "POST", "/v1/models/diabetes/versions/7/predict", {"json": {}}, 404, None),
    ("path traversal", "POST", "/v1/models/..%2F..%2Fetc/predict", {"json": {}}, 404, None),
    ("dotdot name", "POST", "/v1/models/../predict", {"json": {}}, 404, None),
    ("unknown route", "GET", "/v3/anything", {}, 404, None),
    ("get on predict", "GET", "/v1/models/diabetes/predict", {}, 405, None),
    (
        "wrong type",
        "POST",
        "/v1/models/diabetes/predict",
        {"json": {"instances": [{"age": "old"}]}},
        422,
        ["body", "instances", 0, "age"],
    ),
    ("missing field", "POST", "/v1/models/diabetes/predict", {"json": {"age": 1.0}}, 422, ["body", "sex"]),
    (
        "extra field",
        "POST",
        "/v1/models/diabetes/predict",
        {
            "json": {
                "age": 0,
                "sex": 0,
                "bmi": 0,
                "bp": 0,
                "s1": 0,
                "s2": 0,
                "s3": 0,
                "s4": 0,
                "s5": 0,
                "s6": 0,
                "zip": 1,
            }
        },
        422,
        ["body", "zip"],
    ),
    (
        "overflow to infinity",
        "POST",
        "/v1/models/diabetes/predict",
        {
            "content": b'{"age": 1e999, "sex": 0, "bmi": 0, "bp": 0, "s1": 0, "s2": 0, "s3": 0, "s4": 0, "s5": 0, "s6": 0}'
        },
        422,
        ["body", "age"],
    ),
    ("empty instances", "POST", "/v1/models/diabetes/predict", {"json": {"instances": []}}, 422, None),
    ("array body", "POST", "/v1/models/diabetes/predict", {"json": [1, 2]}, 422, None),
    (
        "bad content type",
        "POST",
        "/v1/models/diabetes/predict",
        {"content": b"age=1", "headers": {"content-type": "text/plain"}},
        415,
        None,
    ),
    (
        "v2 wrong datatype",
        "POST",
        "/v2/models/diabetes/infer",
        {"json": {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [0] * 10}]}},
        422,
        ["body", "inputs", 0, "datatype"],
    ),
    (
        "v2 wrong shape",
        "POST",
        "/v2/models/diabetes/infer",
        {"json": {"inputs": [{"name": "input", "shape": [1, 9], "datatype": "FP64", "data": [0] * 9}]}},
        422,
        ["body", "inputs", 0, "shape"],
    ),
    (
        "v2 wrong count",
        "POST",
        "/v2/models/diabetes/infer",
        {"json": {"inputs": [{"name": "input", "shape": [2, 10], "datatype": "FP64", "data": [0] * 10}]}},
        422,
        ["body", "inputs", 0, "data"],
    ),
    (
        "v2 unknown input",
        "POST",
        "/v2/models/diabetes/infer",
        {"json": {"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", "data": [0] * 10}]}},
        422,
        ["body", "inputs"],
    ),
    (
        "v2 ragged",
        "POST",
        "/v2/models/diabetes/infer",
        {
            "json": {
                "inputs": [
                    {"name": "input", "shape": [2, 10], "datatype": "FP64", "data": [[0] * 10, [0] * 9]}
                ]
            }
        },
        422,
        ["body", "inputs", 0, "data"],
    ),
    (
        "v2 strings in numbers",
        "POST",
        "/v2/models/diabetes/infer",
        {"json": {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64", "data": ["a"] * 10}]}},
        422,
        ["body", "inputs", 0, "data"],
    ),
    (
        "v2 missing inputs",
        "POST",
        "/v2/models/diabetes/infer",
        {"json": {"id": "x"}},
        422,
        ["body", "inputs"],
    ),
    (
        "v2 bad binary header",
        "POST",
        "/v2/models/diabetes/infer",
        {"content": b"{}", "headers": {"inference-header-content-length": "99"}},
        400,
        None,
    ),
    (
        "v2 unknown output",
        "POST",
        "/v2/models/diabetes/infer",
        {
            "json": {
                "inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64", "data": [0] * 10}],
                "outputs": [{"name": "nope"}],
            }
        },
        404,
        None,
    ),
    (
        "bad timeout header",
        "POST",
        "/v1/models/diabetes/predict",
        {"json": {"age": 0}, "headers": {"x-request-timeout": "soon"}},
        422,
        None,
    ),
]


@pytest.mark.parametrize(
    ("what", "method", "path", "kwargs", "status", "loc"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_errors_are_json_with_status_and_location(server, what, method, path, kwargs, status, loc):
    r = httpx.request(method, server.url + path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in r.text and "/work/" not in r.text and ".py" not in r.text
    if loc is not None:
        assert body["detail"][0]["loc"] == loc, body


def test_a_number_beyond_float32_is_refused_not_served_as_infinity(float32_repo, tmp_path):
    """A forest takes float32: 1e39 is finite JSON but infinity in float32, on both APIs."""
    manifest = Repository(float32_repo).manifest("breast_cancer", "1")
    record = {f.name: f.max for f in manifest.features} | {"mean_radius": 1e39}
    srv = start_server(float32_repo, tmp_path, "--log-level", "warning")
    try:
        r = httpx.post(f"{srv.url}/v1/models/breast_cancer/predict", json=record)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "mean_radius"] and "float32" in detail["msg"]
        v2 = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": list(record.values())}]}
        r = httpx.post(f"{srv.url}/v2/models/breast_cancer/infer", json=v2)
        assert r.status_code == 422 and "float32" in r.json()["detail"][0]["msg"], r.text
    finally:
        srv.stop()


def test_too_many_rows_is_413(server):
    _, d = _frames()
    rows = [d.iloc[0].to_dict()] * (16 * 256 + 1)
    r = httpx.post(f"{server.url}/v1/models/diabetes/predict", json={"instances": rows})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_body_over_limit_is_413_before_reading(demo_repo, tmp_path):

    srv = start_server(demo_repo, tmp_path, "--max-body-bytes", "1024", "--log-level", "warning")
    try:
        r = httpx.post(
            f"{srv.url}/v1/models/diabetes/predict",
            content=b"x" * 4096,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413

        def trickle():  # no Content-Length: the limit is enforced while streaming
            yield b"[" + b" " * 1000
            yield b" " * 1000

        r = httpx.post(
            f"{srv.url}/v1/models/diabetes/predict",
            content=trickle(),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413
    finally:
        srv.stop()


def test_deadline_passed_is_504(server):
    _, d = _frames()
    r = httpx.post(
        f"{server.url}/v1/models/diabetes/predict",
        json=d.iloc[0].to_dict(),
        headers={"x-request-timeout": "0.000001"},
    )
    assert r.status_code == 504 and "deadline" in r.json()["error"]


def test_v2_bytes_inputs_are_length_prefixed():
    from gateway.v2.decode import _bytes_elements

    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", b"xyz"))
    assert _bytes_elements(raw, 3, []).tolist() == ["ab", "", "xyz"]


def test_concurrent_requests_are_batched(server):
    _, d = _frames()
    record = d.iloc[0].to_dict()
    stats_url = f"{server.url}/v2/models/diabetes/stats"
    before = httpx.get(stats_url).json()["model_stats"][0]

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def one() -> int:
                r = await client.post(f"{server.url}/v1/models/diabetes/predict", json=record)
                return r.status_code

            return await asyncio.gather(*(one() for _ in range(400)))

    statuses = asyncio.run(burst())
    assert statuses.count(200) == 400
    after = httpx.get(stats_url).json()["model_stats"][0]
    rows = after["inference_count"] - before["inference_count"]
    batches = after["execution_count"] - before["execution_count"]
    assert rows == 400
    assert batches < rows, "no two requests ever shared a batch"
    assert after["largest_batch_rows"] > 1
