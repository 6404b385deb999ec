"""Hostile bodies against both APIs of a real server: thousands of generated inputs, each
answered 4xx with a JSON error (or 200 when it happens to be valid), never a 5xx, never a
hung connection, and the server keeps serving valid requests afterwards."""

from __future__ import annotations

import math

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import start_server

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
numbers = (
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**63, -(2**63) - 1])
)  # fmt: skip
record_values = numbers | st.none() | st.text(max_size=5) | st.booleans() | st.lists(numbers, max_size=2)


@pytest.fixture(scope="module")
def fuzz_server(demo_repo, tmp_path_factory):
    srv = start_server(demo_repo, tmp_path_factory.mktemp("fuzz"), "--log-level", "warning",
                       "--max-body-bytes", "65536")  # fmt: skip
    with httpx.Client(base_url=srv.url, timeout=5) as client:
        yield srv, client
    srv.stop()


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body["error"], str) and body["error"]
        assert "Traceback" not in response.text and "/work/" not in response.text


@SETTINGS
@given(body=json_values)
def test_any_json_to_both_apis(fuzz_server, body):
    _, client = fuzz_server
    for path in ("/v1/models/diabetes/predict", "/v2/models/diabetes/infer"):
        _check(
            client.post(path, content=msgspec.json.encode(body), headers={"content-type": "application/json"})
        )


@SETTINGS
@given(record=st.fixed_dictionaries({f: record_values for f in FEATURES},
                                    optional={"extra": record_values, "instances": json_values}))  # fmt: skip
def test_records_with_hostile_values(fuzz_server, record):
    _, client = fuzz_server
    # msgpack carries what JSON cannot: NaN, Infinity, huge integers
    try:
        packed = msgspec.msgpack.encode(record)
    except OverflowError:
        packed = msgspec.msgpack.encode({k: str(v) for k, v in record.items()})
    _check(
        client.post(
            "/v1/models/diabetes/predict", content=packed, headers={"content-type": "application/msgpack"}
        )
    )
    finite = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    try:
        body = msgspec.json.encode(finite)
    except (OverflowError, TypeError):
        return
    _check(
        client.post("/v1/models/diabetes/predict", content=body, headers={"content-type": "application/json"})
    )


@SETTINGS
@given(
    name=st.text(max_size=8), shape=st.lists(st.integers(-3, 40), max_size=4),
    datatype=st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "BOOL", "FP16", "UINT8", "nope"]),
    data=st.lists(numbers | st.text(max_size=3) | st.lists(numbers, max_size=3), max_size=30),
    binary=st.one_of(st.none(), st.integers(-5, 200)),
)  # fmt: skip
def test_v2_tensors_with_wrong_shapes_and_types(fuzz_server, name, shape, datatype, data, binary):
    _, client = fuzz_server
    tensor = {"name": name if name else "input", "shape": shape, "datatype": datatype, "data": data}
    try:
        body = msgspec.json.encode({"inputs": [tensor]})
    except (OverflowError, TypeError):
        body = msgspec.json.encode({"inputs": [{**tensor, "data": [str(d) for d in data]}]})
    headers = {"content-type": "application/json"}
    if binary is not None:
        tensor["parameters"] = {"binary_data_size": binary}
        body = msgspec.json.encode({"inputs": [{k: v for k, v in tensor.items() if k != "data"}]})
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(body)),
        }
        body += bytes(range(256))[: max(0, binary)]
    _check(client.post("/v2/models/diabetes/infer", content=body, headers=headers))


@SETTINGS
@given(raw=st.binary(max_size=300), cut=st.integers(0, 200),
       content_type=st.sampled_from(["application/json", "application/msgpack", "text/plain", "", "application/json; charset=latin-1", "multipart/form-data"]))  # fmt: skip
def test_raw_truncated_and_mistyped_bodies(fuzz_server, raw, cut, content_type):
    _, client = fuzz_server
    valid = msgspec.json.encode({"instances": [dict.fromkeys(FEATURES, 0.1)] * 3})
    for body in (raw, valid[:cut], valid[:cut] + raw):
        for path in ("/v1/models/diabetes/predict", "/v2/models/diabetes/infer"):
            _check(client.post(path, content=body, headers={"content-type": content_type}))


def test_deep_nesting_and_huge_numbers(fuzz_server):
    _, client = fuzz_server
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (deep, b'{"age": ' + b"9" * 5000 + b"}", b'{"instances": ' + deep[:60000] + b"}"):
        for path in ("/v1/models/diabetes/predict", "/v2/models/diabetes/infer"):
            r = client.post(path, content=body, headers={"content-type": "application/json"})
            _check(r)
            assert r.status_code in (400, 413, 422)


def test_header_and_url_abuse(fuzz_server):
    srv, client = fuzz_server
    for path in ("/v1/models/" + "a" * 5000 + "/predict", "/v1/models/%2e%2e/predict", "/v1/models/%ff%fe/predict",
                 "/v1/models/diabetes/versions/%2e%2e/predict", "/v1/models//predict", "/v2/models/diabetes/versions/1.2.3.4/infer"):  # fmt: skip
        r = client.post(path, json={})
        assert r.status_code == 404, (path, r.status_code)
        _check(r)
    r = client.post("/v1/models/diabetes/predict", json={}, headers={"x-request-id": "x" * 10_000})
    _check(r)
    assert len(r.headers["x-request-id"]) <= 128
    for length in (b"-5", b"abc", b"99999999999999999999"):
        status = _raw(srv.url, b"POST /v1/models/diabetes/predict HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: " + length + b"\r\n\r\n{}")  # fmt: skip
        assert status is None or 400 <= status < 500, (length, status)
    try:
        r = client.post("/v1/models/diabetes/predict", json={}, headers={"x-big": "y" * 200_000})
        assert r.status_code < 500
    except httpx.RemoteProtocolError:
        pass  # the HTTP parser may drop a connection with an absurd header; the server must live on


def _raw(url: str, request: bytes) -> int | None:
    """Send bytes no well-behaved client would; the status, or None if the server hung up."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(request)
        data = sock.recv(4096)
    return int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else None


def test_still_serving_after_the_fuzzing(fuzz_server):
    srv, client = fuzz_server
    r = client.post("/v1/models/diabetes/predict", json=dict.fromkeys(FEATURES, 0.01))
    assert r.status_code == 200
    assert srv.process.poll() is None
    assert "unhandled error" not in srv.log()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_operations_never_fail_on_the_server_side(fuzz_server, mode):
    """schemathesis, driven by our own /openapi.json: valid and schema-violating calls alike."""
    srv, _ = fuzz_server
    schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    if mode == "negative":  # only a request body can be wrong; GET /healthz has nothing to break
        operations = [op for op in operations if op.method.upper() == "POST"]
    seen: list[int] = []
    for operation in operations:
        strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=strategy)
        def call(case) -> None:
            response = case.call(base_url=srv.url, timeout=5)
            seen.append(response.status_code)
            assert response.status_code < 500, (case.path, case.body, response.text)
            if response.status_code >= 400:
                assert "error" in response.json()

        call()
    assert len(seen) >= 100
    if mode == "positive":
        assert 200 in seen  # valid calls do get answered
