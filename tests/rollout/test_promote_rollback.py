"""Hot promote and rollback under load with zero failed requests; the admin API's guard;
bad artifacts during promote; restarts and the serving.json watcher.

Covers `gateway/http/admin.py`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.artifacts.repository import Repository
from tests.conftest import ROOT, free_port, start_server

TOKEN = "s3cret-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def repo(demo_repo, tmp_path) -> Path:
    """diabetes versions 1, 2 and 3 (same model, distinct artifacts), 1 live."""
    root = tmp_path / "repo"
    shutil.copytree(demo_repo / "diabetes" / "1", root / "diabetes" / "1")
    for version in ("2", "3"):
        shutil.copytree(root / "diabetes" / "1", root / "diabetes" / version)
        manifest = (root / "diabetes" / version / "manifest.json").read_text()
        (root / "diabetes" / version / "manifest.json").write_text(
            manifest.replace('"version": "1"', f'"version": "{version}"')
        )
    Repository(root).set_live("diabetes", "1")
    return root


def _record(url: str) -> dict:
    features = httpx.get(f"{url}/openapi.json").json()["components"]["schemas"]["diabetes_record"]["required"]
    return dict.fromkeys(features, 0.01)


class Load:
    """Steady concurrent traffic on loopback, bounded in time, recording every answer."""

    def __init__(self, url: str, threads: int = 4, limit_s: float = 30) -> None:
        self.url, self.record = url, _record(url)
        self.stop = threading.Event()
        self.results: list[tuple[float, int, str | None]] = []
        self.deadline = time.monotonic() + limit_s
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                try:
                    r = client.post(f"{self.url}/v1/models/diabetes/predict", json=self.record)
                    self.results.append((time.monotonic(), r.status_code, r.headers.get("x-model-version")))
                except httpx.HTTPError as exc:
                    self.results.append((time.monotonic(), 0, type(exc).__name__))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def first_after(self, since: float, version: str) -> float | None:
        return next((t for t, _, v in sorted(self.results) if t >= since and v == version), None)


def test_promote_and_rollback_under_load_fail_nothing(repo, tmp_path):
    srv = start_server(repo, tmp_path, "--log-level", "warning", env={"GATEWAY_ADMIN_TOKEN": TOKEN})
    try:
        with Load(srv.url) as load:
            time.sleep(1.0)
            promoted_at = time.monotonic()
            r = httpx.post(
                f"{srv.url}/admin/models/diabetes/promote", json={"version": "2"}, headers=AUTH, timeout=30
            )
            assert r.status_code == 200, r.text
            assert r.json() == {"model": "diabetes", "version": "2", "previous": "1"}
            time.sleep(1.5)
            rolled_at = time.monotonic()
            r = httpx.post(f"{srv.url}/admin/models/diabetes/rollback", headers=AUTH, timeout=30)
            assert r.status_code == 200 and r.json()["version"] == "1", r.text
            time.sleep(1.5)
        statuses = [s for _, s, _ in load.results]
        assert len(statuses) > 100, "too little load to prove anything"
        assert set(statuses) == {200}, {s for s in statuses if s != 200}
        assert all(v in ("1", "2") for _, _, v in load.results)
        seen_2 = load.first_after(promoted_at, "2")
        seen_1 = load.first_after(rolled_at, "1")
        assert seen_2 is not None and seen_2 - promoted_at < 5
        assert seen_1 is not None and seen_1 - rolled_at < 5
        # once the switch answered, nothing is served by the version it replaced
        settled = [v for t, _, v in load.results if rolled_at + 1.0 < t]
        assert settled and set(settled) == {"1"}
        assert Repository(repo).serving("diabetes").live == "1"
    finally:
        srv.stop()


def test_tampered_version_is_refused_and_the_old_one_keeps_serving(repo, tmp_path):
    (repo / "diabetes" / "3" / "model.onnx").write_bytes(b"\x08\x07 not what the manifest hashed")
    srv = start_server(repo, tmp_path, "--log-level", "warning", env={"GATEWAY_ADMIN_TOKEN": TOKEN})
    try:
        with Load(srv.url, threads=2) as load:
            r = httpx.post(
                f"{srv.url}/admin/models/diabetes/promote", json={"version": "3"}, headers=AUTH, timeout=30
            )
            time.sleep(0.5)
        assert r.status_code == 422
        assert "sha256" in r.json()["error"] and "1 keeps serving" in r.json()["error"]
        assert {s for _, s, _ in load.results} == {200} and {v for *_, v in load.results} == {"1"}
        assert Repository(repo).serving("diabetes").live == "1"  # serving.json untouched
        models = httpx.get(f"{srv.url}/admin/models", headers=AUTH).json()["models"]
        assert models[0]["live"] == "1" and "sha256" in models[0]["failure"]
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'gateway_model_switches_total{model="diabetes",version="3",result="failed"} 1' in metrics
    finally:
        srv.stop()
    assert '"event":"switch_failed"' in srv.log()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"authorization": "Bearer wrong"}, 403),
        ({"authorization": f"Basic {TOKEN}"}, 401),
        (AUTH, 200),
    ],
)
def test_admin_needs_the_token(demo_repo, tmp_path, headers, status):
    srv = start_server(demo_repo, tmp_path, "--log-level", "warning", env={"GATEWAY_ADMIN_TOKEN": TOKEN})
    try:
        r = httpx.get(f"{srv.url}/admin/models", headers=headers)
        assert r.status_code == status, r.text
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(f"{srv.url}/admin/models/diabetes/rollback", headers=headers)
        assert r.status_code == (409 if status == 200 else status)  # no previous version yet
    finally:
        srv.stop()


def test_admin_is_off_without_a_token(server):
    assert httpx.get(f"{server.url}/admin/models", headers=AUTH).status_code == 404
    # Triton's repository extension is the admin API's: off, it says how to turn it on.
    r = httpx.post(f"{server.url}/v2/repository/index", headers=AUTH)
    assert r.status_code == 403 and "GATEWAY_ADMIN_TOKEN" in r.json()["error"]


def test_restart_serves_what_serving_json_says(repo, tmp_path):
    srv = start_server(repo, tmp_path, "--log-level", "warning", env={"GATEWAY_ADMIN_TOKEN": TOKEN})
    try:
        assert (
            httpx.post(
                f"{srv.url}/admin/models/diabetes/promote", json={"version": "2"}, headers=AUTH, timeout=30
            ).status_code
            == 200
        )
    finally:
        srv.stop()
    srv = start_server(repo, tmp_path, "--log-level", "warning")
    try:
        r = httpx.post(f"{srv.url}/v1/models/diabetes/predict", json=_record(srv.url))
        assert r.headers["x-model-version"] == "2"
        assert httpx.get(f"{srv.url}/readyz").json()["models"] == {"diabetes": "2"}
    finally:
        srv.stop()


def test_cli_promote_is_followed_by_a_running_server(repo, tmp_path):
    srv = start_server(repo, tmp_path, "--log-level", "warning", "--poll-seconds", "0.2")
    try:
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "models", "promote", "diabetes", "2", "--repo", str(repo)],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        record, deadline, version = _record(srv.url), time.monotonic() + 5, None
        while time.monotonic() < deadline and version != "2":
            version = httpx.post(f"{srv.url}/v1/models/diabetes/predict", json=record).headers[
                "x-model-version"
            ]
            time.sleep(0.05)
        assert version == "2"
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "models", "rollback", "diabetes", "--repo", str(repo)],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and version != "1":
            version = httpx.post(f"{srv.url}/v1/models/diabetes/predict", json=record).headers[
                "x-model-version"
            ]
            time.sleep(0.05)
        assert version == "1"
    finally:
        srv.stop()


def test_pinned_versions_are_reachable_by_version_path(repo, tmp_path):
    srv = start_server(repo, tmp_path, "--log-level", "warning", env={"GATEWAY_ADMIN_TOKEN": TOKEN})
    try:
        record = _record(srv.url)
        assert httpx.post(f"{srv.url}/v1/models/diabetes/versions/2/predict", json=record).status_code == 404
        r = httpx.post(
            f"{srv.url}/admin/models/diabetes/load", json={"version": "2"}, headers=AUTH, timeout=30
        )
        assert r.status_code == 200
        r = httpx.post(f"{srv.url}/v1/models/diabetes/versions/2/predict", json=record)
        assert r.status_code == 200 and r.headers["x-model-version"] == "2"
        assert (
            httpx.post(f"{srv.url}/v1/models/diabetes/predict", json=record).headers["x-model-version"] == "1"
        )
        r = httpx.post(f"{srv.url}/admin/models/diabetes/unload", json={"version": "1"}, headers=AUTH)
        assert r.status_code == 409  # the live version cannot be unloaded
        r = httpx.post(f"{srv.url}/admin/models/diabetes/unload", json={"version": "2"}, headers=AUTH)
        assert r.status_code == 200
        assert httpx.post(f"{srv.url}/v1/models/diabetes/versions/2/predict", json=record).status_code == 404
        index = httpx.post(f"{srv.url}/v2/repository/index", headers=AUTH).json()
        assert {(e["version"], e["state"]) for e in index} == {
            ("1", "READY"),
            ("2", "UNAVAILABLE"),
            ("3", "UNAVAILABLE"),
        }
        r = httpx.post(f"{srv.url}/admin/models/diabetes/promote", json={"version": "9"}, headers=AUTH)
        assert r.status_code == 404
        r = httpx.post(f"{srv.url}/admin/models/diabetes/promote", content=b"{", headers=AUTH)
        assert r.status_code == 400
    finally:
        srv.stop()


def test_admin_port_keeps_admin_off_the_public_port(demo_repo, tmp_path):
    admin_port = free_port()
    srv = start_server(
        demo_repo,
        tmp_path,
        "--admin-port",
        str(admin_port),
        "--log-level",
        "warning",
        env={"GATEWAY_ADMIN_TOKEN": TOKEN},
    )
    try:
        assert httpx.get(f"{srv.url}/admin/models", headers=AUTH).status_code == 404
        r = httpx.get(f"http://127.0.0.1:{admin_port}/admin/models", headers=AUTH)
        assert r.status_code == 200 and r.json()["models"][0]["name"] == "breast_cancer"
    finally:
        srv.stop()
