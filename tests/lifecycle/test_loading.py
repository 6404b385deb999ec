"""Loading one version (`gateway/lifecycle/loading.py`): verified, warmed at every batch
size, its batcher started; every failure a ModelLoadError with a one-line reason.
Warm-up inputs come from `gateway/lifecycle/warmup.py`, covered here."""

from __future__ import annotations

import time

import msgspec
import numpy as np
import pytest

from gateway.artifacts.manifest import Feature
from gateway.artifacts.repository import IntegrityError, Repository
from gateway.lifecycle.loading import Loader, records_body_bound
from gateway.lifecycle.warmup import warmup_feeds, warmup_sizes
from gateway.observability.telemetry import Telemetry
from gateway.runtime import ModelLoadError
from gateway.testing import FakeRuntime
from gateway.v2.messages import MAX_ELEMENT_BYTES
from tests.lifecycle.conftest import Runtimes, settings_for
from tests.security.models import publish_identity, publish_records


@pytest.mark.asyncio
async def test_a_loaded_version_ran_every_batch_size_twice_and_answers(repo, repository, runtimes, telemetry):
    model = await Loader(settings_for(repo), repository, runtimes, telemetry).load("ident", "2")
    try:
        assert model.ready and (model.name, model.version) == ("ident", "2")
        # once to warm, once to time against the inline budget
        assert runtimes.made[("ident", "2")].batches == [1, 1, 2, 2, 4, 4]
        out = await model.batcher.submit({"x": np.ones((3, 4), np.float32)}, 3, time.monotonic() + 5, None)
        assert out["y"].tolist() == [[2.0] * 4] * 3
        # told to telemetry as loaded, not live; the batch is seen by the model's statistics
        assert telemetry.model_info.value(("ident", "2", model.manifest.onnx.sha256, "fake")) == 0.0
        assert model.largest_batch == 3
        assert telemetry.batch_rows.count(("ident", "2", "idle")) == 1
    finally:
        await model.batcher.close()


@pytest.mark.parametrize(("budget_us", "inline"), [(0, 0), (10_000_000, 4)])
def test_batch_sizes_that_answer_within_the_inline_budget_run_inline(repo, repository, budget_us, inline):
    settings = settings_for(repo, inline_budget_us=budget_us)
    model = Loader(settings, repository, Runtimes(), Telemetry(enabled=False)).build("ident", "1")
    assert model.batcher.inline_rows == inline


@pytest.mark.asyncio
async def test_a_runtime_that_fails_warm_up_on_its_manifest_sample_is_refused_with_the_batch_size(
    tmp_path, telemetry
):
    publish_records(tmp_path, "rec", "1", ("a", "b"))  # features: warm-up rows are the manifest's
    loader = Loader(settings_for(tmp_path), Repository(tmp_path), lambda *_: FakeRuntime(poison=0.0), telemetry)
    with pytest.raises(ModelLoadError, match=r"^warm-up at 1 rows failed: poisoned row in batch$"):
        await loader.load("rec", "1")


@pytest.mark.asyncio
async def test_a_tensor_model_that_refuses_made_up_warm_up_values_is_served_not_warmed(repo, repository, telemetry):
    loader = Loader(settings_for(repo), repository, lambda *_: FakeRuntime(poison=0.0), telemetry)
    model = await loader.load("ident", "1")
    try:
        assert model.ready and model.batcher.inline_rows == 0  # costs unknown: never inline
    finally:
        await model.batcher.close()


@pytest.mark.asyncio
async def test_any_exception_while_building_is_a_load_error_without_paths(repo, repository, telemetry):
    def factory(*_: object) -> FakeRuntime:
        raise TypeError("bad literal in /abs/secret/codec.py")

    with pytest.raises(ModelLoadError) as refused:
        await Loader(settings_for(repo), repository, factory, telemetry).load("ident", "1")
    assert "bad literal" in str(refused.value) and "/abs/secret" not in str(refused.value)


@pytest.mark.asyncio
async def test_a_load_slower_than_its_timeout_fails(repo, repository, telemetry):
    def factory(*_: object) -> FakeRuntime:
        time.sleep(0.3)
        return FakeRuntime()

    loader = Loader(settings_for(repo, load_timeout_s=0.05), repository, factory, telemetry)
    with pytest.raises(ModelLoadError, match=r"longer than 0\.05 s"):
        await loader.load("ident", "1")


@pytest.mark.asyncio
async def test_an_artifact_whose_sha256_differs_is_refused_as_such(repo, repository, runtimes, telemetry):
    (repo / "ident" / "1" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="sha256"):
        await Loader(settings_for(repo), repository, runtimes, telemetry).load("ident", "1")
    assert runtimes.calls == []  # refused before a session was opened


def test_the_records_body_bound_is_every_feature_spelt_long_per_row(tmp_path):
    manifest = publish_records(tmp_path, "rec", "1", ("a", "bb"))
    row = 2 + sum(6 * len(name) + 4 + MAX_ELEMENT_BYTES for name in ("a", "bb"))
    assert records_body_bound(manifest, 10) == 64 * 1024 + 10 * row
    category = msgspec.structs.replace(manifest, features=[Feature(name="c", dtype="string", categories=["xyz"])])
    assert records_body_bound(category, 10) == 64 * 1024 + 10 * (2 + 6 + 4 + 6 * 3 + 2)
    free_text = msgspec.structs.replace(manifest, features=[Feature(name="note", dtype="string")])
    assert records_body_bound(free_text, 10) is None  # no stated length: no bound
    assert records_body_bound(publish_identity(tmp_path, "plain", "1"), 10) is None  # tensors only


def test_warm_up_feeds_are_typical_rows_at_every_size_up_to_the_largest(tmp_path):
    manifest = publish_identity(tmp_path, "ident", "1", width=3)
    feeds = warmup_feeds(manifest, 5)
    assert list(feeds) == ["x"] and feeds["x"].shape == (5, 3) and feeds["x"].dtype == np.float32
    assert warmup_sizes(4) == [1, 2, 4] and warmup_sizes(6) == [1, 2, 4, 6] and warmup_sizes(1) == [1]
