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
        if mode == "negative" and not _can_be_wrong(operation):
            continue
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


def _can_be_wrong(operation) -> bool:
    """A negative case needs something to violate: a body, a parameter that is not free
    text (a path segment is any string), or a security requirement (the token left out).
    Triton's shared memory unregister takes none of them: schemathesis finds no case."""
    spec = operation.definition.raw
    typed = any(
        p.get("in") != "path" or p.get("schema", {}).get("type") != "string" or len(p.get("schema", {})) > 1
        for p in spec.get("parameters", [])
    )
    return "requestBody" in spec or typed or bool(spec.get("security"))


# --- Issue 16: ten thousand hostile bodies, lying headers and shapes included ------------

FUZZ_BODIES = 10_000


class _Hostile:
    """Seeded generator of hostile requests for both APIs: junk JSON and msgpack, records
    with wrong types and huge values, V2 tensors whose shapes, datatypes, element counts,
    binary sizes and header lengths lie, BYTES tails with lengths that overrun."""

    def __init__(self, seed: int, v2_inputs: dict[str, list[dict]], features: list[str]) -> None:
        import random

        self.rng = random.Random(seed)
        self.v2_inputs = v2_inputs
        self.features = features

    def junk(self, depth: int = 0):
        r = self.rng
        kind = r.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 10**18])
        if kind == 3:
            return r.choice([0.5, -1e308, 1e308, 5e-324, 3.4e38, 1e39])
        if kind == 4:
            return r.choice(["", "a", "1e5", "NaN", "Infinity", "é" * 3, "x" * r.choice([10, 1000])])
        if kind == 5:
            return r.choice(["true", "null", "[]", "{}"])
        if kind == 6:
            return [self.junk(depth + 1) for _ in range(r.randrange(5))]
        if kind == 7:
            return {str(self.junk(depth + 2))[:8]: self.junk(depth + 1) for _ in range(r.randrange(4))}
        return [[self.junk(depth + 2)] * r.randrange(3)] * r.randrange(3)

    def shape(self, true_shape: list[int]) -> list:
        r = self.rng
        rows = r.choice([0, 1, 2, 3, 4097, 10**9, 400_000_000, 10**18, -1])
        rest = [d if d > 0 else r.choice([1, 2, 3]) for d in true_shape[1:]]
        return r.choice([
            [rows, *rest], [rows], [*rest], [rows, *rest, 1], [1, *rest], [2, *rest],
            [rows, *(d * r.choice([1, 2, 1000]) for d in rest)], [],
        ])  # fmt: skip

    def v2(self, model: str) -> tuple[bytes, dict[str, str]]:
        r = self.rng
        tensors = []
        tail = b""
        for spec in self.v2_inputs[model]:
            shape = self.shape(spec["shape"])
            datatype = r.choice([spec["datatype"]] * 3 + ["FP32", "BYTES", "INT64", "BOOL", "nope"])
            tensor: dict = {"name": r.choice([spec["name"]] * 4 + ["", "other"]), "shape": shape,
                            "datatype": datatype}  # fmt: skip
            count = 1
            for d in shape[:3]:
                count *= max(0, min(d, 64))
            if r.random() < 0.45:  # binary, with lies in its size or its BYTES lengths
                if datatype == "BYTES":
                    parts = [len(s).to_bytes(4, "little") + s for s in (b"ab", b"", "é".encode())] * max(1, count)
                    raw = b"".join(parts[: max(1, count)])
                    raw = r.choice([raw, raw[:-1], raw + b"\x00", b"\xff\xff\xff\xff" + raw, b"\x00" * 4 * count])
                else:
                    raw = bytes(r.randrange(256) for _ in range(r.choice([0, 3, 4, 8, 16, 4 * count, 8 * count])))
                size = r.choice([len(raw)] * 4 + [len(raw) + 1, -1, 2**40, "8", True, 0.5])
                tensor["parameters"] = {"binary_data_size": size}
                if r.random() < 0.1:
                    tensor["data"] = [1.0]
                tail += raw
            else:
                tensor["data"] = r.choice([
                    [self.junk() for _ in range(r.randrange(6))],
                    [r.uniform(-3, 3) for _ in range(count)],
                    ["s"] * count, [[0.1] * max(1, count // 2)] * 2, self.junk(),
                ])  # fmt: skip
            tensors.append(tensor)
        request: dict = {"inputs": r.choice([tensors, tensors * 2, tensors[:0]])}
        if r.random() < 0.2:
            request["id"] = r.choice(["r-1", "x" * 300, ""])
        if r.random() < 0.2:
            request["parameters"] = r.choice([{"timeout": self.junk()}, {"binary_data_output": True},
                                              {"x": [1, [2]]}, {"priority": 10**30}])  # fmt: skip
        if r.random() < 0.1:
            request["outputs"] = [{"name": r.choice(["variable", "nope", "y", "echo"])}]
        head = _encode(request, msgpack=not tail and r.random() < 0.2)
        if not tail:
            kind = "application/msgpack" if head[:1] != b"{" else "application/json"
            return head, {"content-type": kind}
        declared = r.choice([str(len(head))] * 5 + [str(len(head) + 3), "-1", "abc", str(2**64), "0"])
        return head + tail, {"content-type": "application/octet-stream", "inference-header-content-length": declared}

    def records(self) -> tuple[bytes, dict[str, str]]:
        r = self.rng
        record = {f: (r.uniform(-0.2, 0.2) if r.random() < 0.6 else self.junk()) for f in self.features}
        if r.random() < 0.3:
            record.pop(r.choice(self.features))
        if r.random() < 0.2:
            record[r.choice(["extra", "", "age "])] = 1
        body = r.choice([record, {"instances": [record] * r.choice([0, 1, 3, 5000])}, [record], self.junk()])
        msgpack = r.random() < 0.25
        return _encode(body, msgpack), {"content-type": "application/msgpack" if msgpack else "application/json"}


def _encode(value, msgpack: bool) -> bytes:
    try:
        return msgspec.msgpack.encode(value) if msgpack else msgspec.json.encode(value)
    except (OverflowError, TypeError, ValueError):
        return msgspec.json.encode(str(value)[:200])


@pytest.mark.slow
def test_ten_thousand_hostile_bodies_over_both_apis(demo_repo, tmp_path):
    """Zero 5xx, a JSON error for every refusal, bounded memory, still serving after."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from gateway.artifacts.repository import Repository
    from tests.security.models import publish_echo, publish_identity, rss_mb

    repo = tmp_path / "repo"
    shutil.copytree(demo_repo, repo)
    publish_echo(repo)
    publish_identity(repo)
    local = Repository(repo)
    models = ("diabetes", "echo", "ident")
    v2_inputs = {m: [{"name": s.name, "shape": s.shape, "datatype": s.datatype}
                     for s in local.manifest(m, "1").inputs] for m in models}  # fmt: skip
    srv = start_server(repo, tmp_path, "--log-level", "error", "--poll-seconds", "0")
    statuses: dict[int, int] = {}
    try:
        before = rss_mb(srv.process.pid)

        def worker(seed: int) -> None:
            hostile = _Hostile(seed, v2_inputs, FEATURES)
            with httpx.Client(base_url=srv.url, timeout=30) as client:
                for _ in range(FUZZ_BODIES // 4):
                    if hostile.rng.random() < 0.3:
                        body, headers = hostile.records()
                        path = "/v1/models/diabetes/predict"
                    else:
                        model = hostile.rng.choice(models)
                        body, headers = hostile.v2(model)
                        path = f"/v2/models/{model}/infer"
                    r = client.post(path, content=body, headers=headers)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    assert r.status_code < 500, (path, body[:300], headers, r.text[:300])
                    if r.status_code >= 400:
                        assert isinstance(r.json()["error"], str), r.text[:200]

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(worker, range(4)))
        assert sum(statuses.values()) >= FUZZ_BODIES
        assert 200 in statuses and len(statuses) >= 4, statuses  # valid, malformed, too large...
        assert rss_mb(srv.process.pid) - before < 150
        ok = httpx.post(f"{srv.url}/v1/models/diabetes/predict", json=dict.fromkeys(FEATURES, 0.01))
        assert ok.status_code == 200
        assert srv.process.poll() is None and "unhandled error" not in srv.log()
    finally:
        srv.stop()
    print(dict(sorted(statuses.items())))
