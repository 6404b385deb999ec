"""The lifecycle module tests' parts: small models published into a temporary repository
and run by `FakeRuntime` (doubles "x" into "y"), so no ONNX Runtime session and no socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.artifacts.manifest import Manifest
from gateway.artifacts.repository import Repository
from gateway.observability.telemetry import Telemetry
from gateway.runtime import Runtime
from gateway.settings import Settings, build_settings
from gateway.testing import FakeRuntime
from tests.security.models import publish_identity


def settings_for(repo: Path, **extra: object) -> Settings:
    return build_settings({"repo": str(repo), "max_batch_rows": 4, "poll_seconds": 0, **extra}, environ={})


class Runtimes:
    """A runtime factory that hands out FakeRuntimes, remembers them, and refuses the
    versions named in `broken` as ONNX Runtime refuses a bad graph."""

    def __init__(self) -> None:
        self.made: dict[tuple[str, str], FakeRuntime] = {}
        self.broken: set[tuple[str, str]] = set()
        self.calls: list[tuple[str, str]] = []

    def __call__(self, model: bytes, manifest: Manifest, settings: Settings) -> Runtime:
        key = (manifest.name, manifest.version)
        self.calls.append(key)
        if key in self.broken:
            raise RuntimeError(f"refused {manifest.name}:{manifest.version} by the test")
        runtime = self.made[key] = FakeRuntime()
        return runtime


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """ident versions 1, 2 and 3, without serving.json."""
    root = tmp_path / "repo"
    for version in ("1", "2", "3"):
        publish_identity(root, "ident", version)
    return root


@pytest.fixture
def repository(repo: Path) -> Repository:
    return Repository(repo)


@pytest.fixture
def runtimes() -> Runtimes:
    return Runtimes()


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Let background tasks (a retiring version, a shadow's worker) run until `predicate`."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)
    return True
