"""Issue 16, the model side: a model never reads files outside its version directory (H2),
one broken model fails alone and /readyz says so (M7), background tasks outlive their
errors (M5), repository reads are bounded (L3, L4, L12), reasons carry no paths (L2).

Covers `gateway/artifacts/onnx_refs.py`."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from gateway.app import _publish_metrics
from gateway.artifacts.manifest import TensorSpec
from gateway.artifacts.onnx_refs import ExternalDataError, check_external_data, external_data
from gateway.artifacts.repository import IntegrityError, Repository, RepositoryError, sha256_bytes
from gateway.lifecycle.registry import ModelRegistry, ort_runtime
from gateway.observability.telemetry import Telemetry
from gateway.runtime import ModelLoadError, OrtRuntime
from gateway.settings import build_settings
from tests.conftest import ROOT, start_server
from tests.security.models import (
    fifo,
    float_identity,
    publish,
    publish_echo,
    publish_identity,
    publish_records,
    reads_external,
    wait_for,
)

LEAK_SPECS = (
    [TensorSpec(name="x", datatype="FP32", shape=[-1, 1])],
    [TensorSpec(name="y", datatype="UINT8", shape=[16], role="other")],
)


def _settings(repo: Path, **extra):
    return build_settings({"repo": str(repo), "max_batch_rows": 4, "poll_seconds": 0, **extra}, environ={})


# --- H2: external data ------------------------------------------------------------------


def test_h2_external_data_is_found_wherever_a_tensor_can_live():
    """Initializers, Constant attributes and subgraphs (an If's branches) all count."""
    assert external_data(float_identity()) == []
    assert external_data(reads_external("../../etc/passwd")) == ["../../etc/passwd"]
    const = numpy_helper.from_array(np.zeros(4, np.uint8), "c")
    const.ClearField("raw_data")
    const.data_location = TensorProto.EXTERNAL
    entry = const.external_data.add()
    entry.key, entry.value = "location", "/etc/hostname"
    branch = helper.make_graph([helper.make_node("Constant", [], ["k"], value=const)], "then", [],
                               [helper.make_tensor_value_info("k", TensorProto.UINT8, [4])])  # fmt: skip
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("out", TensorProto.UINT8, [4])
    node = helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch)
    model = helper.make_model(helper.make_graph([node], "g", [cond], [out])).SerializeToString()
    assert external_data(model) == ["/etc/hostname", "/etc/hostname"]
    with pytest.raises(ExternalDataError):
        external_data(b"\x08\x01 not a protobuf \xff\xff")


def test_h2_external_data_is_refused_unless_inside_and_hashed(tmp_path):
    data = bytes(range(16))
    (tmp_path / "weights.bin").write_bytes(data)
    inside = reads_external("weights.bin")
    check_external_data(inside, tmp_path, {"weights.bin": sha256_bytes(data)})  # vouched for
    for model, hashes in (
        (inside, {}),  # not listed
        (inside, {"weights.bin": "0" * 64}),  # listed with another hash
        (reads_external("../weights.bin"), {"../weights.bin": sha256_bytes(data)}),
        (reads_external("/etc/passwd"), {"/etc/passwd": "x"}),
        (reads_external("*/_ORT_MEM_ADDR_/*"), {}),  # ONNX Runtime's in-memory tag
    ):
        with pytest.raises(ExternalDataError):
            check_external_data(model, tmp_path, hashes)
    with pytest.raises(ExternalDataError):
        check_external_data(inside)  # what `gateway convert` calls: self-contained only
    with pytest.raises(ModelLoadError, match="external data"):
        OrtRuntime(inside, provider="cpu")


def test_h2_a_model_reading_a_file_is_never_loaded(tmp_path):
    """The artifact's sha256 matches its manifest; the file it names exists relative to the
    server's working directory. It is still refused, and its bytes never come back."""
    secret = (ROOT / "pyproject.toml").read_bytes()[:16]
    repo = tmp_path / "repo"
    publish(repo, "leak", "1", reads_external("pyproject.toml"), *LEAK_SPECS)
    with pytest.raises(IntegrityError, match="external data"):
        Repository(repo).load_verified("leak", "1")
    publish_identity(repo)
    srv = start_server(repo, tmp_path, "--log-level", "warning", wait_ready=False)
    try:
        assert wait_for(lambda: _answers(srv.url), 60)
        # and the server runs from an empty directory of its own: nothing to name there
        cwd = Path(f"/proc/{srv.process.pid}/cwd")
        assert cwd.resolve() != ROOT and list(cwd.iterdir()) == []
        ready = httpx.get(f"{srv.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["not_served"] == ["leak"]
        assert "external data" in ready.json()["failures"]["leak"]
        r = httpx.post(f"{srv.url}/v2/models/leak/infer",
                       json={"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0]}]})  # fmt: skip
        assert r.status_code in (404, 503) and secret.decode(errors="replace") not in r.text
        ok = httpx.post(f"{srv.url}/v2/models/ident/infer",
                        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})  # fmt: skip
        assert ok.status_code == 200
    finally:
        srv.stop()


def _answers(url: str) -> bool:
    try:
        return "models" in httpx.get(f"{url}/readyz", timeout=2).json()
    except httpx.HTTPError:
        return False


# --- M7, L2: one broken model fails alone ---------------------------------------------------


def _broken_repository(repo: Path) -> None:
    """Two good models; one whose features make the records codec impossible (two features
    of one name), one whose model.onnx is garbage with a matching sha256, one that reads a
    file through external data."""
    publish_echo(repo)
    publish_identity(repo)
    publish_records(repo, "codec", features=("a", "a"))
    publish(repo, "corrupt", "1", b"\x08\x07" + b"\x12\x04abcd" * 8, *LEAK_SPECS)
    publish(repo, "leak", "1", reads_external("pyproject.toml"), *LEAK_SPECS)


def test_m7_broken_models_fail_alone_and_readyz_names_them(tmp_path):
    repo = tmp_path / "repo"
    _broken_repository(repo)
    srv = start_server(repo, tmp_path, "--log-level", "warning", wait_ready=False)
    try:
        assert wait_for(lambda: _answers(srv.url), 60)
        ready = httpx.get(f"{srv.url}/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False
        assert body["models"] == {"echo": "1", "ident": "1"}
        assert body["not_served"] == ["codec", "corrupt", "leak"]
        assert set(body["failures"]) == {"codec", "corrupt", "leak"}
        for reason in body["failures"].values():
            assert reason and "Traceback" not in reason
        # L2: no absolute path (the repository's, ONNX Runtime's sources) in any answer
        assert str(tmp_path) not in ready.text and "/onnxruntime/" not in ready.text
        ok = httpx.post(f"{srv.url}/v2/models/echo/infer",
                        json={"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["hi"]}]})  # fmt: skip
        assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == ["hi"]
        assert srv.process.poll() is None
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
    finally:
        srv.stop()


@pytest.mark.asyncio
async def test_m7_any_exception_while_building_fails_that_model_only(tmp_path):
    """A runtime that raises a TypeError (what a codec did) or any other exception: that
    model is not served, with a one-line reason; the others are."""
    repo = tmp_path / "repo"
    publish_echo(repo)
    publish_identity(repo)

    def factory(model, manifest, settings):
        if manifest.name == "echo":
            raise TypeError("Literal values must be str, int or None, not /abs/secret/path.py")
        return ort_runtime(model, manifest, settings)

    registry = ModelRegistry(_settings(repo), Repository(repo), factory, Telemetry(enabled=False))
    await registry.load_repository()
    try:
        assert registry.live == {"ident": "1"}
        assert not registry.all_ready()
        body = registry.readiness()
        assert body["not_served"] == ["echo"]
        assert "Literal values" in body["failures"]["echo"] and "/abs/secret" not in body["failures"]["echo"]
    finally:
        await registry.close()


@pytest.mark.asyncio
async def test_m7_without_serving_json_the_newest_version_that_loads_serves(tmp_path):
    repo = tmp_path / "repo"
    publish_identity(repo, version="1")
    publish(repo, "ident", "2", b"\x08\x07" + b"\x12\x04abcd" * 8, *LEAK_SPECS)  # broken newest
    registry = ModelRegistry(_settings(repo), Repository(repo), telemetry=Telemetry(enabled=False))
    await registry.load_repository()
    try:
        assert registry.live == {"ident": "1"}
        assert registry.all_ready()
    finally:
        await registry.close()


# --- M5: background tasks outlive their errors -------------------------------------------


@pytest.mark.asyncio
async def test_m5_the_watcher_survives_any_error_and_readyz_shows_it(tmp_path):
    repo = tmp_path / "repo"
    publish_identity(repo, version="1")
    publish_identity(repo, version="2")
    Repository(repo).set_live("ident", "1")
    registry = ModelRegistry(_settings(repo), Repository(repo), telemetry=Telemetry(enabled=False))
    await registry.load_repository()
    watcher = asyncio.create_task(registry.follow(0.02))
    try:
        serving = repo / "ident" / "serving.json"
        serving.unlink()
        serving.mkdir()  # a directory named serving.json: an OSError on every read
        assert await _until(lambda: "watcher" in registry.background)
        assert "ident" in registry.readiness()["background"]["watcher"]
        assert registry.background_errors.value(("watcher",)) >= 1
        # a bug in the step itself is survived too
        original = registry.poll

        async def broken() -> None:
            raise KeyError("bug")

        registry.poll = broken  # type: ignore[method-assign]
        await asyncio.sleep(0.1)
        registry.poll = original  # type: ignore[method-assign]
        assert not watcher.done()
        serving.rmdir()
        Repository(repo).set_live("ident", "2")  # a later promote is still applied
        assert await _until(lambda: registry.live == {"ident": "2"} and "watcher" not in registry.background)
        assert not watcher.done()
    finally:
        watcher.cancel()
        await registry.close()


@pytest.mark.asyncio
async def test_m5_the_metrics_publisher_survives_a_failed_write(tmp_path):
    repo = tmp_path / "repo"
    publish_identity(repo)
    shared = tmp_path / "metrics"  # missing: every write fails
    telemetry = Telemetry(str(shared), enabled=True)
    registry = ModelRegistry(_settings(repo), Repository(repo), telemetry=telemetry)
    task = asyncio.create_task(_publish_metrics(telemetry, registry))
    try:
        assert await _until(lambda: "metrics_publisher" in registry.background, 5)
        shared.mkdir()
        assert await _until(lambda: "metrics_publisher" not in registry.background, 5)
        assert any(shared.glob("*.msgpack"))
        assert not task.done()
    finally:
        task.cancel()


async def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


# --- L3, L4, L12: what the repository reads ------------------------------------------------


def test_l3_a_manifest_must_name_its_own_directory(tmp_path):
    repo = Repository(tmp_path)
    publish_identity(tmp_path, version="1")
    shutil.copytree(tmp_path / "ident" / "1", tmp_path / "ident" / "2")  # manifest still says 1
    with pytest.raises(RepositoryError, match="not the directory"):
        repo.load_verified("ident", "2")
    shutil.copytree(tmp_path / "ident", tmp_path / "other")
    with pytest.raises(RepositoryError, match="not the directory"):
        repo.manifest("other", "1")
    assert repo.load_verified("ident", "1")[0].version == "1"


def test_l4_devices_fifos_and_symlinks_are_refused_at_once(tmp_path):
    repo = Repository(tmp_path)
    publish_identity(tmp_path)
    model = tmp_path / "ident" / "1" / "model.onnx"
    model.unlink()
    model.symlink_to("/dev/zero")
    started = time.monotonic()
    with pytest.raises(RepositoryError, match="symbolic link"):
        repo.load_verified("ident", "1")
    model.unlink()
    fifo(model)
    with pytest.raises(RepositoryError, match="not a regular file"):
        repo.load_verified("ident", "1")
    fifo(tmp_path / "ident" / "serving.json")
    with pytest.raises(RepositoryError, match="not a regular file"):
        repo.serving("ident")
    assert time.monotonic() - started < 2  # nothing blocked on a FIFO or read a device


def test_l4_size_caps_are_checked_before_reading(tmp_path, monkeypatch):
    repo = Repository(tmp_path)
    publish_identity(tmp_path)
    monkeypatch.setattr("gateway.artifacts.repository.MAX_MODEL_BYTES", 64)
    with pytest.raises(RepositoryError, match="the limit is 64"):
        repo.load_verified("ident", "1")
    (tmp_path / "ident" / "serving.json").write_bytes(b" " * (70 * 1024))
    with pytest.raises(RepositoryError, match="the limit is"):
        repo.serving("ident")


def test_l12_a_version_directory_linking_out_of_the_repository_is_refused(tmp_path):
    outside = tmp_path / "outside"
    publish_identity(outside, version="7")
    root = tmp_path / "repo"
    publish_identity(root, version="1")
    os.symlink(outside / "ident" / "7", root / "ident" / "7")
    repo = Repository(root)
    assert repo.versions("ident") == ["1"]
    with pytest.raises(RepositoryError, match="outside the repository"):
        repo.load_verified("ident", "7")
    os.symlink(outside / "ident", root / "linked")
    assert repo.versions("linked") == []


def test_l4_a_remote_repository_is_bounded_like_a_local_one(tmp_path, monkeypatch):
    """Oversized remote files are refused before they are fetched: the manifest's version
    is not mirrored, the model's blob is not cached; the other versions are."""
    fsspec = pytest.importorskip("fsspec")
    from gateway.artifacts.remote import RemoteRepository

    local = tmp_path / "source"
    publish_identity(local, version="1")
    publish_identity(local, version="2")
    fs = fsspec.filesystem("memory")
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"/bounded/{path.relative_to(local).as_posix()}", path.read_bytes())
    model_size = (local / "ident" / "1" / "model.onnx").stat().st_size
    monkeypatch.setattr("gateway.artifacts.remote.MAX_MODEL_BYTES", model_size - 1)
    fs.pipe_file("/bounded/ident/3/manifest.json", b" " * (17 * 1024 * 1024))  # over 16 MiB
    repo = RemoteRepository("memory://bounded", tmp_path / "cache")
    repo.refresh()
    assert repo.versions("ident") == ["1", "2"]  # 3's manifest was refused
    assert not any((tmp_path / "cache" / "blobs").iterdir())  # no oversized blob cached
    with pytest.raises(IntegrityError, match="missing"):
        repo.load_verified("ident", "1")


@pytest.mark.asyncio
async def test_l4_a_load_that_hangs_fails_that_version_and_frees_its_lock(tmp_path):
    repo = tmp_path / "repo"
    publish_identity(repo)
    publish_echo(repo)

    def factory(model, manifest, settings):
        if manifest.name == "echo":
            time.sleep(3)  # a read that hangs, as on a stalled network file system
        return ort_runtime(model, manifest, settings)

    registry = ModelRegistry(_settings(repo, load_timeout_s=0.5), Repository(repo), factory,
                             Telemetry(enabled=False))  # fmt: skip
    started = time.monotonic()
    await registry.load_repository()
    try:
        assert time.monotonic() - started < 2.5
        assert registry.live == {"ident": "1"}
        assert "longer than 0.5 s" in registry.failures["echo"]
        async with asyncio.timeout(1):
            async with registry._lock("echo"):  # not held by the abandoned load
                pass
    finally:
        await registry.close()
