"""The protocol-neutral inference core (`gateway/inference.py`) on FakeRuntime: one request
found, decoded, batched, encoded and recorded, with no transport in sight."""

from __future__ import annotations

import time

import numpy as np
import pytest
import pytest_asyncio

from gateway.artifacts.repository import Repository
from gateway.errors import BadRequest, NotFound
from gateway.inference import Decoded, InferenceCore, deadline_after, request_id
from gateway.lifecycle.registry import LoadedModel, ModelRegistry
from gateway.observability.telemetry import Telemetry
from tests.lifecycle.conftest import Runtimes, settings_for
from tests.security.models import publish_identity


@pytest_asyncio.fixture
async def core(tmp_path):
    repo = tmp_path / "repo"
    publish_identity(repo, "ident", "1")
    settings = settings_for(repo, log_inputs=True)
    telemetry = Telemetry()
    registry = ModelRegistry(settings, Repository(repo), Runtimes(), telemetry)
    await registry.load_repository()
    yield InferenceCore(settings, registry, telemetry)
    await registry.close()


def _decode(model: LoadedModel) -> Decoded:
    return Decoded({"x": np.full((2, 4), 1.5, np.float32)}, 2, time.monotonic() + 5)


def _encode(model: LoadedModel, decoded: Decoded, outputs: dict[str, np.ndarray]) -> list[float]:
    return [float(v) for v in outputs["y"][:, 0]]


async def _steps(core, call, name, decode, raw):
    """What a front door does: the core's steps in order, its own decode and encode between."""
    model = core.resolve(call, name, None)
    decoded = decode(model)
    outputs = await core.run(call, model, decoded)
    answer = _encode(model, decoded, outputs)
    core.record(call, model, decoded, outputs, raw)
    return answer


@pytest.mark.asyncio
async def test_a_request_runs_through_the_model_and_its_outcome_is_recorded(core):
    call = core.begin("infer", b"req-1", None, None, "POST infer")
    call.logged = True
    assert await _steps(core, call, "ident", _decode, b'{"raw": 1}') == [3.0, 3.0]
    core.finish(call, 200)
    outcome = call.outcome
    assert (outcome.request_id, outcome.model, outcome.version, outcome.rows) == ("req-1", "ident", "1", 2)
    assert outcome.prediction == {"mean": 3.0, "min": 3.0, "max": 3.0}
    assert outcome.input_sha256 is not None and len(outcome.input_sha256) == 64
    assert outcome.inputs == '{"raw": 1}'  # log_inputs is on
    core.telemetry.registry.render()  # request latencies are counted in blocks
    assert core.telemetry.requests.value(("ident", "1", "infer", "200")) == 1
    assert core.registry.get("ident").stats.success.count == 1


@pytest.mark.asyncio
async def test_a_request_that_finds_no_model_is_recorded_without_one(core):
    call = core.begin("predict", None, None, None, "POST predict")
    with pytest.raises(NotFound):
        await _steps(core, call, "missing", _decode, b"")
    core.finish(call, 404, "no model")
    assert call.outcome.model is None and call.outcome.status == 404 and call.outcome.error == "no model"
    core.telemetry.registry.render()
    assert core.telemetry.requests.value(("", "", "predict", "404")) == 1


@pytest.mark.asyncio
async def test_a_refused_decode_reaches_no_batch(core):
    def refuse(model: LoadedModel) -> Decoded:
        raise BadRequest("bad body")

    call = core.begin("infer", None, None, None, "POST infer")
    with pytest.raises(BadRequest):
        await _steps(core, call, "ident", refuse, b"")
    core.finish(call, 400, "bad body")
    assert call.outcome.model == "ident" and call.outcome.rows == 0
    assert core.telemetry.rejected.value(("ident", "1", "malformed")) == 1
    assert core.registry.get("ident").stats.fail.count == 1


def test_a_request_id_is_the_callers_when_short_ascii_else_fresh():
    assert request_id(b"abc-123") == "abc-123"
    for given in (None, b"", b"x" * 129, "é".encode()):
        fresh = request_id(given)
        assert len(fresh) == 16 and int(fresh, 16) >= 0


def test_a_deadline_comes_from_the_v2_timeout_the_header_or_the_default(tmp_path):
    settings = settings_for(tmp_path, timeout_ms=2000)
    now = time.monotonic()
    assert 1.9 < deadline_after(settings) - now < 2.1
    assert 0.4 < deadline_after(settings, timeout_us=500_000) - now < 0.6
    assert 0.2 < deadline_after(settings, timeout_ms=b"300") - now < 0.4
    assert 1.9 < deadline_after(settings, timeout_us=0) - now < 2.1  # Triton's "no timeout"
    for bad in ({"timeout_us": True}, {"timeout_us": "5"}, {"timeout_ms": b"soon"}, {"timeout_us": -1},
                {"timeout_ms": b"86400000"}):  # fmt: skip
        with pytest.raises(BadRequest, match="timeout"):
            deadline_after(settings, **bad)
