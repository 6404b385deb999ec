"""Faults and abuse the validator cannot catch: slow clients, a session that raises
mid-batch, artifacts that are corrupt in every way, a disk that fills during convert."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shutil
import socket
import time

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from gateway.app import create_app
from gateway.artifacts.repository import Repository, sha256_bytes
from gateway.lifecycle.registry import ort_runtime
from gateway.settings import build_settings
from tests.conftest import InProcessServer, start_server

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
POISON = 123.0


def test_trickled_body_is_cut_off_with_408(demo_repo, tmp_path):
    srv = start_server(demo_repo, tmp_path, "--body-timeout-s", "1", "--log-level", "warning")
    try:
        port = int(srv.url.rsplit(":", 1)[1])
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/models/diabetes/predict HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{")  # fmt: skip
            answer = b""
            for _ in range(40):  # one byte every 0.1 s: the whole body would take 20 s
                try:
                    sock.sendall(b" ")
                except OSError:
                    break
                sock.settimeout(0.1)
                try:
                    answer += sock.recv(4096)
                except TimeoutError:
                    continue
                if answer:
                    break
            # The head and the body may arrive in separate segments: read to the close.
            sock.settimeout(2)
            with contextlib.suppress(TimeoutError):
                while chunk := sock.recv(4096):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"error"' in answer and time.monotonic() - started < 4
        r = httpx.post(f"{srv.url}/v1/models/diabetes/predict", json=dict.fromkeys(FEATURES, 0.01))
        assert r.status_code == 200
    finally:
        srv.stop()


class PoisonedRuntime:
    """The real session, which raises for any batch holding the poison value."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.armed = False  # warm-up runs first

    def run(self, feeds):
        if self.armed and np.any(next(iter(feeds.values())) == POISON):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : poisoned batch")
        return self.inner.run(feeds)


def test_session_raising_mid_batch_fails_only_the_guilty(demo_repo):
    runtimes: list[PoisonedRuntime] = []

    def factory(data, manifest, settings):
        runtime = PoisonedRuntime(ort_runtime(data, manifest, settings))
        runtimes.append(runtime)
        return runtime

    settings = build_settings({"repo": str(demo_repo), "log_level": "warning", "inline_budget_us": "0"}, {})
    with InProcessServer(create_app(settings, runtime_factory=factory)) as url:
        for runtime in runtimes:
            runtime.armed = True

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url) as client:
                bodies = [dict.fromkeys(FEATURES, 0.01) for _ in range(30)]
                bodies[7] = {**bodies[7], "age": POISON}
                return await asyncio.gather(
                    *(client.post("/v1/models/diabetes/predict", json=b) for b in bodies)
                )

        responses = asyncio.run(burst())
        after = httpx.post(f"{url}/v1/models/diabetes/predict", json=dict.fromkeys(FEATURES, 0.02))
    statuses = [r.status_code for r in responses]
    assert statuses[7] == 500 and statuses.count(200) == 29
    body = responses[7].json()
    assert "poisoned batch" in body["error"] and "Traceback" not in responses[7].text
    assert after.status_code == 200


def _broken_copies(demo_repo, tmp_path):
    """diabetes 2: a model whose sha256 matches but ONNX Runtime cannot read; 3: a
    truncated manifest; 4: model.onnx missing."""
    repo = tmp_path / "repo"
    shutil.copytree(demo_repo / "diabetes", repo / "diabetes")
    shutil.copytree(demo_repo / "breast_cancer", repo / "breast_cancer")
    for v in ("2", "3", "4"):
        shutil.copytree(repo / "diabetes" / "1", repo / "diabetes" / v)
        text = (
            (repo / "diabetes" / v / "manifest.json")
            .read_text()
            .replace('"version": "1"', f'"version": "{v}"')
        )
        (repo / "diabetes" / v / "manifest.json").write_text(text)
    garbage = b"\x08\x01not an onnx graph at all" * 10
    good_sha = sha256_bytes((repo / "diabetes" / "2" / "model.onnx").read_bytes())
    (repo / "diabetes" / "2" / "model.onnx").write_bytes(garbage)
    manifest = (repo / "diabetes" / "2" / "manifest.json").read_text()
    (repo / "diabetes" / "2" / "manifest.json").write_text(manifest.replace(good_sha, sha256_bytes(garbage)))
    text = (repo / "diabetes" / "3" / "manifest.json").read_text()
    (repo / "diabetes" / "3" / "manifest.json").write_text(text[: len(text) // 2])
    (repo / "diabetes" / "4" / "model.onnx").unlink()
    return repo


@pytest.mark.parametrize(("version", "reason"), [("2", "onnx"), ("3", "manifest"), ("4", "missing")])
def test_corrupt_artifacts_never_load_and_the_server_stays_up(demo_repo, tmp_path, version, reason):
    repo = _broken_copies(demo_repo, tmp_path)
    Repository(repo).set_live("diabetes", "1")
    srv = start_server(repo, tmp_path, "--poll-seconds", "0.2", "--log-level", "info")
    try:
        (repo / "diabetes" / "serving.json").write_text(f'{{"live": "{version}", "previous": "1"}}')
        time.sleep(1.0)
        r = httpx.post(f"{srv.url}/v1/models/diabetes/predict", json=dict.fromkeys(FEATURES, 0.01))
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        assert httpx.get(f"{srv.url}/readyz").status_code == 200
    finally:
        srv.stop()
    log = srv.log().lower()
    assert '"event":"switch_failed"' in log and reason in log


def test_full_disk_during_convert_leaves_no_version(tmp_path, monkeypatch):
    from converters import ConversionError, convert

    x, y = load_iris(return_X_y=True, as_frame=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), tmp_path / "m.joblib")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gateway.artifacts.repository.os.fsync", full)
    with pytest.raises(ConversionError, match="No space left"):
        convert(tmp_path / "m.joblib", name="iris", version="1", repo=tmp_path / "repo", sample=x)
    assert Repository(tmp_path / "repo").versions("iris") == []
    # Nothing a server could take for a model: not even the name's folder (the convert made
    # it, and removed it with the staged version: tests/convert/test_atomic.py).
    assert not (tmp_path / "repo" / "iris").exists()
