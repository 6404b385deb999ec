"""The V2 service on plain values, with FakeRuntime behind a real registry: no sockets.
What both transports share is checked here once; tests/serve/test_v2_transports.py checks
that each transport says the same over its bytes.

Covers the V2 codec the service runs: `gateway/v2/messages.py`, `gateway/v2/parse.py`,
`gateway/v2/data.py`, `gateway/v2/decode.py`, `gateway/v2/encode.py`."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
import pytest_asyncio

from gateway.artifacts.manifest import TensorSpec
from gateway.artifacts.remote import open_repository
from gateway.errors import BadRequest, Forbidden, NotFound, Unauthorized, Unprocessable
from gateway.inference import InferenceCore, deadline_after, request_id
from gateway.lifecycle.registry import ModelRegistry
from gateway.observability.telemetry import Telemetry
from gateway.settings import build_settings
from gateway.testing import FakeRuntime
from gateway.v2 import decode, messages, parse
from gateway.v2.service import V2Service, authorize, sorted_versions
from tests.security.models import float_identity, publish


def _publish(repo: Path, version: str, labels: dict[str, list[str]] | None = None) -> None:
    manifest = publish(
        repo, "dbl", version, float_identity(4),
        [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        [TensorSpec(name="y", datatype="FP32", shape=[-1, 4], role="value")],
    )  # fmt: skip
    if labels:  # the manifest as convert --labels writes it
        path = repo / "dbl" / version / "manifest.json"
        data = msgspec.json.decode(path.read_bytes())
        path.write_bytes(msgspec.json.encode({**data, "labels": labels}))
        del manifest


@pytest_asyncio.fixture
async def service(tmp_path):
    repo = tmp_path / "repo"
    for version in ("3", "10", "2"):
        _publish(repo, version, {"y": ["a", "b", "c", "d"]} if version == "10" else None)
    settings = build_settings({"repo": str(repo), "metrics": False, "admin_token": "s3cret"}, {})
    registry = ModelRegistry(
        settings, open_repository(settings.repo, None, refresh=False),
        lambda data, manifest, s: FakeRuntime(), Telemetry(enabled=False),
    )  # fmt: skip
    for version in ("3", "10", "2"):
        await registry.load("dbl", version)
    core = InferenceCore(settings, registry, registry.telemetry)
    yield V2Service(settings, registry, core)
    await registry.close()


def _request(body: dict) -> messages.InferRequest:
    request, _ = parse.parse_request(msgspec.json.encode(body), None)
    return request


async def _infer(service: V2Service, body: dict, version: str | None = "3"):
    call = service.core.begin("infer", None, None, None, "test")
    return await service.infer(call, "dbl", version, lambda model: (_request(body), b""), b"")


X = {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [8, 7, 6, 5]]}


@pytest.mark.asyncio
async def test_infer_runs_the_model_and_classifies_with_the_labels_given(service):
    answer = await _infer(service, {"inputs": [X]})
    np.testing.assert_array_equal(answer.outputs[0].array, np.array(X["data"], np.float32) * 2)
    k2 = {"inputs": [X], "outputs": [{"name": "y", "parameters": {"classification": 2}}]}
    plain = await _infer(service, k2)  # version 3: no labels, "score:index"
    assert plain.outputs[0].datatype == "BYTES"
    assert plain.outputs[0].array.tolist() == [["8.000000:3", "6.000000:2"], ["16.000000:0", "14.000000:1"]]
    labelled = await _infer(service, k2, "10")
    assert labelled.outputs[0].array.tolist() == [
        ["8.000000:3:d", "6.000000:2:c"],
        ["16.000000:0:a", "14.000000:1:b"],
    ]


@pytest.mark.asyncio
async def test_zero_rows_run_through_the_model_and_answer_its_empty_outputs(service):
    """As Triton passes them on: only the graph knows what it answers to nothing."""
    answer = await _infer(
        service, {"inputs": [{"name": "x", "shape": [0, 4], "datatype": "FP32", "data": []}]}
    )
    assert answer.outputs[0].array.shape == (0, 4) and answer.outputs[0].array.dtype == np.float32


@pytest.mark.asyncio
async def test_unknown_model_and_version_in_tritons_words(service):
    call = service.core.begin("infer", None, None, None, "test")
    with pytest.raises(NotFound) as missing:
        await service.infer(call, "nope", None, lambda m: (_request({"inputs": [X]}), b""), b"")
    assert missing.value.message == "Request for unknown model: 'nope' is not found"
    with pytest.raises(NotFound) as version:
        await service.infer(call, "dbl", "7", lambda m: (_request({"inputs": [X]}), b""), b"")
    assert version.value.message == "Request for unknown model: 'dbl' version 7 is not found"
    for op in (service.model_metadata, service.model_config, service.statistics):
        with pytest.raises(NotFound) as info:
            op("nope", None)
        assert info.value.message == "Request for unknown model: 'nope' is not found"
        assert "dbl" not in info.value.message  # never the names of the models that are there
    with pytest.raises(NotFound) as escaped:
        service.model_metadata("a\nb\x1b", None)
    assert "\n" not in escaped.value.message and "\x1b" not in escaped.value.message


@pytest.mark.asyncio
async def test_versions_sorted_numerically_everywhere(service):
    assert service.model_metadata("dbl", "3")["versions"] == ["2", "3", "10"]
    assert service.model_config("dbl", "3")["version_policy"]["specific"]["versions"] == ["2", "3", "10"]
    assert [m.version for m in service.statistics("dbl", None)] == ["2", "3", "10"]
    assert [e["version"] for e in service.repository_index(False)] == ["2", "3", "10"]
    assert sorted_versions(["1.10.0", "1.2.0", "1.2.0-rc1", "2", "1"]) == [
        "1",
        "2",
        "1.2.0-rc1",
        "1.2.0",
        "1.10.0",
    ]


@pytest.mark.asyncio
async def test_refusals_triton_answers_400(service):
    cases = [
        {"inputs": [{**X, "shape": [-2, 4]}]},  # a negative dimension
        {"inputs": [X], "outputs": [{"name": "y"}, {"name": "y"}]},  # an output named twice
        {
            "inputs": [
                {"name": "x", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}
            ]
        },
    ]
    for body in cases:
        with pytest.raises(BadRequest):
            await _infer(service, body)


@pytest.mark.asyncio
async def test_timeout_zero_is_no_timeout(service):
    settings = service.settings
    default = deadline_after(settings)
    assert abs(deadline_after(settings, 0) - default) < 0.05
    decode.decode_infer(
        service.registry.get("dbl", "3").manifest,
        _request({"parameters": {"timeout": 0}, "inputs": [X]}),
        b"",
        64,
    )
    with pytest.raises(BadRequest):
        deadline_after(settings, -1)


def test_one_request_id_rule():
    assert request_id(b"abc-123") == "abc-123" and request_id("abc-123") == "abc-123"
    for bad in (b"a\nb", b"a\x1bb", b"a\x00b", "a\nb", b"x" * 129, "é".encode()):
        fresh = request_id(bad)
        assert fresh != (bad if isinstance(bad, str) else bad.decode(errors="replace"))
        assert fresh.isprintable() and len(fresh) == 16


@pytest.mark.asyncio
async def test_authorization_needs_exactly_one_bearer_token(service):
    settings = service.settings
    authorize(settings, ["Bearer s3cret"])
    with pytest.raises(BadRequest):
        authorize(settings, ["Bearer s3cret", "Bearer s3cret"])
    with pytest.raises(Unauthorized):
        authorize(settings, [])
    with pytest.raises(Unauthorized):
        authorize(settings, ["Basic s3cret"])
    with pytest.raises(Forbidden):
        authorize(settings, ["Bearer wrong"])


@pytest.mark.asyncio
async def test_json_floats_beyond_fp32_are_refused_not_served_as_infinity(service):
    manifest = service.registry.get("dbl", "3").manifest
    for edge in (3.4e38, -3.4e38, 0.0):  # within FP32: served as given
        feeds, _ = decode.decode_infer(manifest, _request({"inputs": [{**X, "data": [edge] * 8}]}), b"", 64)
        assert np.isfinite(feeds["x"]).all()
    for beyond in (3.5e38, -1e39, 1e300):
        with pytest.raises(Unprocessable) as info:
            decode.decode_infer(
                manifest, _request({"inputs": [{**X, "data": [1.0] * 7 + [beyond]}]}), b"", 64
            )
        assert "float32" in info.value.detail[0]["msg"]
