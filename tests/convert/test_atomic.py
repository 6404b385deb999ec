"""`gateway convert` is atomic at the repository level: a convert that fails while it
writes (a full disk, a kill) leaves nothing a server reads, so every server polling the
repository stays ready, and a later convert of the same version succeeds."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from gateway.artifacts.repository import MANIFEST_FILE, MODEL_FILE, Repository
from tests.conftest import ROOT, Server, start_server
from tests.security.models import OPSET, publish_identity, wait_for

WIDTH = 1024
OUTPUTS = 5000  # a 20 MB weight: writing and syncing it takes long enough to be caught


def _big_onnx(path: Path) -> Path:
    """x FP32 [-1, 1, WIDTH] @ w -> y: tensors in, tensors out (no parity run needed)."""
    weight = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(WIDTH, OUTPUTS)).astype(np.float32), "w"
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, OUTPUTS])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big", [x], [y], [weight])
    path.write_bytes(helper.make_model(graph, opset_imports=OPSET, ir_version=8).SerializeToString())
    return path


def _convert(model: Path, repo: Path, **popen) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "convert", str(model), "--name", "big", "--version", "1",
         "--repo", str(repo)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen,
    )  # fmt: skip


@pytest.fixture
def serving(tmp_path: Path):
    """A repository with one model, and a server polling it every 0.1 s."""
    repo = tmp_path / "repo"
    publish_identity(repo)
    srv = start_server(repo, tmp_path, "--log-level", "warning", "--poll-seconds", "0.1")
    yield repo, srv
    srv.stop()


def _stays_ready(srv: Server, seconds: float = 1.0) -> None:
    """Several polls of the repository later, the server is still ready."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = httpx.get(f"{srv.url}/readyz")
        assert r.status_code == 200, r.text
        time.sleep(0.1)


def _later_convert_succeeds(model: Path, repo: Path, srv: Server) -> None:
    done = _convert(model, repo)
    out, _ = done.communicate(timeout=120)
    assert done.returncode == 0, out.decode()
    assert Repository(repo).versions("big") == ["1"]
    assert wait_for(lambda: httpx.get(f"{srv.url}/v2/models/big/ready").status_code == 200, 30)
    _stays_ready(srv, 0.3)


def _leftovers(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if not p.is_relative_to(repo / "ident"))


@pytest.mark.slow
def test_a_convert_that_cannot_write_leaves_nothing_behind(serving, tmp_path):
    repo, srv = serving
    model = _big_onnx(tmp_path / "big.onnx")
    limit = 1024 * 1024  # the model is 20 MB: its write fails with EFBIG, like a full disk

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    failed = _convert(model, repo, preexec_fn=small_files)
    out, _ = failed.communicate(timeout=120)
    assert failed.returncode != 0, out.decode()
    assert "cannot write big:1" in out.decode()
    assert _leftovers(repo) == []  # no empty big/, no staging directory
    assert Repository(repo).models() == ["ident"]
    _stays_ready(srv)
    _later_convert_succeeds(model, repo, srv)


def _staging_file(repo: Path) -> bool:
    """A model file being written anywhere but in a finished version directory."""
    return any(
        p.name == MODEL_FILE and not (p.parent / MANIFEST_FILE).exists() for p in repo.rglob(MODEL_FILE)
    ) or any(p.name.startswith(".") for p in repo.glob("*/*"))


@pytest.mark.slow
def test_a_convert_killed_mid_write_leaves_nothing_a_server_reads(serving, tmp_path):
    repo, srv = serving
    model = _big_onnx(tmp_path / "big.onnx")
    killed = _convert(model, repo)
    caught = False
    while killed.poll() is None:
        if _staging_file(repo):
            os.kill(killed.pid, signal.SIGKILL)
            caught = True
            break
    killed.communicate(timeout=60)
    if not caught:
        pytest.fail("the convert finished before its write could be caught; make the model larger")
    assert killed.returncode == -signal.SIGKILL
    assert Repository(repo).models() == ["ident"]
    assert Repository(repo).versions("big") == []
    _stays_ready(srv)
    # The stale staging directory blocks nothing: the same version converts, and is served.
    _later_convert_succeeds(model, repo, srv)
