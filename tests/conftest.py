from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(
    repo: Path,
    tmp: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60,
    wait_ready: bool = True,
    port: int | None = None,
) -> Server:
    """`gateway serve` as a real process on a loopback port, ready when /readyz says so.
    `port`: a given one, as a replica's successor takes its predecessor's."""
    port = port or free_port()
    log_path = tmp / f"server-{port}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--repo",
                str(repo),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    if not wait_ready:
        return server
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready in {ready_timeout}s:\n{server.log()}")


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from converters.demo import build_demo_repository

    repo = tmp_path_factory.mktemp("demo-repo")
    build_demo_repository(repo, progress=lambda _: None)
    return repo


@pytest.fixture(scope="session")
def float32_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare forest on the breast cancer data: scikit-learn casts its input to float32, so
    its graph reads float32 (the demo models read float64)."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    from converters import convert

    repo = tmp_path_factory.mktemp("float32-repo")
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x.columns = [c.replace(" ", "_") for c in x.columns]
    path = repo.parent / "forest.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y), path)
    convert(path, name="breast_cancer", version="1", repo=repo, sample=x)
    return repo


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(demo_repo, tmp_path_factory.mktemp("server"), "--log-level", "warning")
    yield srv
    srv.stop()


class InProcessServer:
    """uvicorn in a thread, for tests that need to see inside (an in-memory span exporter)."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def two_classifier_versions(
    tmp: Path, samples: int, seed: int, second_labels: Callable[[pd.DataFrame, np.ndarray], np.ndarray]
) -> tuple[Path, pd.DataFrame]:
    """clf version 1 fitted on a synthetic task and version 2 on `second_labels(frame, y)`
    (so the two disagree where that says), converted into a repository; version 1 live."""
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from converters import convert
    from gateway.artifacts.repository import Repository

    x, y = make_classification(n_samples=samples, n_features=4, n_informative=3, n_redundant=0, random_state=seed)
    frame = pd.DataFrame(x, columns=["f0", "f1", "f2", "f3"])
    for version, labels in (("1", y), ("2", second_labels(frame, y))):
        joblib.dump(LogisticRegression().fit(frame, labels), tmp / f"clf{version}.joblib")
        convert(tmp / f"clf{version}.joblib", name="clf", version=version, repo=tmp / "repo", sample=frame)
    Repository(tmp / "repo").set_live("clf", "1")
    return tmp / "repo", frame
