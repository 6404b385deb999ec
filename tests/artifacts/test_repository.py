"""The model repository on a local directory: immutable versions published whole,
artifacts verified by sha256 on load, names and versions checked, serving.json's promote
and rollback. Every publish and load writes and reads a manifest
(`gateway/artifacts/manifest.py`)."""

from __future__ import annotations

import os
import time

import msgspec
import pytest

from gateway.artifacts.manifest import Manifest, OnnxInfo, Source, TensorSpec
from gateway.artifacts.repository import (
    IntegrityError,
    Repository,
    RepositoryError,
    is_valid_name,
    is_valid_version,
    sha256_bytes,
    version_key,
)


def manifest(name: str = "m", version: str = "1", data: bytes = b"onnx") -> Manifest:
    return Manifest(
        name=name,
        version=version,
        created_at="2026-01-01T00:00:00+00:00",
        task="regression",
        layout="matrix",
        source=Source(
            framework="sklearn",
            framework_version="1",
            estimator="X",
            file_name="m.joblib",
            file_sha256="0" * 64,
        ),
        onnx=OnnxInfo(
            sha256=sha256_bytes(data), size=len(data), opset={"ai.onnx": 17}, producer="test", ir_version=8
        ),
        inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 2])],
        outputs=[TensorSpec(name="variable", datatype="FP32", shape=[-1, 1], role="value")],
    )


def test_publish_then_refuse_same_version(tmp_path):
    repo = Repository(tmp_path)
    repo.publish(manifest(), b"onnx")
    assert repo.versions("m") == ["1"]
    with pytest.raises(RepositoryError, match="already exists"):
        repo.publish(manifest(), b"other")
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"onnx"


def test_failed_publish_leaves_no_version(tmp_path, monkeypatch):
    repo = Repository(tmp_path)

    def broken_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gateway.artifacts.repository.os.rename", broken_rename)
    with pytest.raises(OSError, match="No space"):
        repo.publish(manifest(), b"onnx")
    assert repo.versions("m") == [] and repo.models() == []
    # Nothing is left, not even the model's directory this publish made: an empty one
    # would be a model with no version, and every server on the repository unready.
    assert list(tmp_path.iterdir()) == []


def test_a_directory_with_no_finished_version_is_no_model(tmp_path):
    """What an interrupted convert of an older gateway left: an empty `<name>/`, or one
    holding only its staging directory. Servers ignore both; a finished version counts."""
    repo = Repository(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "killed" / ".1.x7a9").mkdir(parents=True)
    (tmp_path / "killed" / ".1.x7a9" / "model.onnx").write_bytes(b"onn")
    (tmp_path / ".publish-k2").mkdir()
    assert repo.models() == []
    repo.publish(manifest(), b"onnx")
    assert repo.models() == ["m"]


def test_publish_removes_only_stale_staging_directories(tmp_path):
    """A killed convert's staging directory goes at the next publish once it is an hour
    old; a younger one may belong to a convert still writing, and stays."""
    old, young = tmp_path / ".publish-old", tmp_path / ".publish-young"
    for path in (old, young):
        path.mkdir()
        (path / "model.onnx").write_bytes(b"onn")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    Repository(tmp_path).publish(manifest(), b"onnx")
    assert not old.exists() and (young / "model.onnx").exists()


def test_load_verified_rejects_tampered_artifact(tmp_path):
    repo = Repository(tmp_path)
    repo.publish(manifest(), b"onnx")
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"evil")
    with pytest.raises(IntegrityError, match="sha256"):
        repo.load_verified("m", "1")


def test_versions_sort_numerically_and_by_semver():
    versions = ["10", "2", "1"]
    assert sorted(versions, key=version_key) == ["1", "2", "10"]
    semver = ["1.10.0", "1.2.0", "1.2.0-rc.1", "0.9.1"]
    assert sorted(semver, key=version_key) == ["0.9.1", "1.2.0-rc.1", "1.2.0", "1.10.0"]


@pytest.mark.parametrize("name", ["..", "../etc", "a/b", "", ".hidden", "a" * 65, "a b"])
def test_unsafe_names_are_refused(name):
    assert not is_valid_name(name)


@pytest.mark.parametrize("version", ["0", "-1", "..", "1/2", "v1", "01", "1.2"])
def test_bad_versions_are_refused(version):
    assert not is_valid_version(version)


def test_live_version_promote_and_rollback(tmp_path):
    repo = Repository(tmp_path)
    for v in ("1", "2", "3"):
        repo.publish(manifest(version=v), b"onnx")
    assert repo.live_version("m") == "3"  # newest when there is no serving.json
    repo.set_live("m", "2")
    assert repo.live_version("m") == "2"
    state = repo.set_live("m", "3")
    assert (state.live, state.previous) == ("3", "2")
    state = repo.rollback("m")
    assert (state.live, state.previous) == ("2", "3")
    on_disk = msgspec.json.decode((tmp_path / "m" / "serving.json").read_bytes())
    assert on_disk == {"live": "2", "previous": "3"}
    with pytest.raises(RepositoryError, match="no version"):
        repo.set_live("m", "9")
