"""Provider choice and CPU fallback run everywhere; CUDA cases run where a GPU is present."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from gateway.artifacts.repository import Repository
from gateway.runtime import CPU, CUDA, OrtRuntime, choose_provider

HAS_CUDA = CUDA in ort.get_available_providers()


@pytest.mark.parametrize(
    ("requested", "available", "providers", "name", "warns"),
    [
        ("cpu", [CPU], [CPU], "cpu", False),
        ("cpu", [CUDA, CPU], [CPU], "cpu", False),
        ("auto", [CPU], [CPU], "cpu", False),
        ("auto", [CUDA, CPU], [CUDA, CPU], "cuda", False),
        ("cuda", [CUDA, CPU], [CUDA, CPU], "cuda", False),
        ("cuda", [CPU], [CPU], "cpu", True),
        ("cuda", ["AzureExecutionProvider", CPU], [CPU], "cpu", True),
    ],
)
def test_choose_provider(requested, available, providers, name, warns):
    choice = choose_provider(requested, available)
    assert choice.providers == providers and choice.name == name
    assert (choice.warning is not None) == warns


@pytest.mark.skipif(HAS_CUDA, reason="checks the fallback on a machine without CUDA")
def test_cuda_request_falls_back_to_cpu_with_a_warning(demo_repo, caplog):
    _, data = Repository(demo_repo).load_verified("diabetes", "1")
    with caplog.at_level(logging.WARNING, logger="gateway.runtime"):
        runtime = OrtRuntime(data, provider="cuda", name="diabetes")
    assert runtime.provider == "cpu"
    assert any("serving on CPU" in r.getMessage() for r in caplog.records)
    out = runtime.run({"input": np.zeros((3, 10))})
    assert out["value"].shape == (3, 1)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_runtime_matches_cpu(demo_repo):
    _, data = Repository(demo_repo).load_verified("breast_cancer", "1")
    x = np.random.default_rng(0).normal(size=(64, 30))  # the demo classifier reads float64
    gpu = OrtRuntime(data, provider="cuda").run({"input": x})
    cpu = OrtRuntime(data, provider="cpu").run({"input": x})
    np.testing.assert_allclose(gpu["probabilities"], cpu["probabilities"], atol=1e-5)


def _mixed_model(tmp_path):
    """A pipeline with a text column: strings must stay on the host under I/O binding."""
    import joblib
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from converters import convert

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=200), "color": rng.choice(["red", "blue"], 200)})
    target = (frame["x"] > 0).astype(int)
    pre = ColumnTransformer([("n", StandardScaler(), ["x"]), ("c", OneHotEncoder(), ["color"])])
    joblib.dump(Pipeline([("p", pre), ("m", LogisticRegression())]).fit(frame, target), tmp_path / "m.joblib")
    convert(tmp_path / "m.joblib", name="mixed", version="1", repo=tmp_path / "repo", sample=frame)
    return Repository(tmp_path / "repo").load_verified("mixed", "1")


@pytest.mark.parametrize("pad", [False, True])
def test_io_binding_path_matches_plain_run_on_cpu(demo_repo, tmp_path, pad):
    _, data = Repository(demo_repo).load_verified("breast_cancer", "1")
    plain = OrtRuntime(data, provider="cpu")
    bound = OrtRuntime(data, provider="cpu", io_binding=True)
    bound._bound._pad = pad  # the padding CUDA uses, exercised here on the CPU
    for rows in (1, 3, 5, 64):
        x = np.random.default_rng(rows).normal(size=(rows, 30))  # the demo classifier reads float64
        expected, got = plain.run({"input": x}), bound.run({"input": x})
        for name in expected:
            assert got[name].shape == expected[name].shape
            np.testing.assert_array_equal(got[name], expected[name])
    _, mixed = _mixed_model(tmp_path)
    feeds = {"x": np.array([[0.5], [-1.0]], np.float64), "color": np.array([["red"], ["blue"]], dtype=object)}
    expected = OrtRuntime(mixed, provider="cpu").run(feeds)
    got = OrtRuntime(mixed, provider="cpu", io_binding=True).run(feeds)
    np.testing.assert_array_equal(got["label"], expected["label"])


@pytest.mark.skipif(HAS_CUDA, reason="simulates a CUDA provider that fails to start")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_listed_but_broken_cuda_falls_back_to_cpu(demo_repo, monkeypatch, caplog):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    _, data = Repository(demo_repo).load_verified("diabetes", "1")
    with caplog.at_level(logging.WARNING, logger="gateway.runtime"):
        runtime = OrtRuntime(data, provider="auto")
    assert runtime.provider == "cpu"
    assert any("serving on CPU" in r.getMessage() for r in caplog.records)
    assert runtime.run({"input": np.zeros((2, 10))})["value"].shape == (2, 1)


_INLINE_ROWS = """
import sys
from gateway.lifecycle.registry import ModelRegistry, ort_runtime
from gateway.artifacts.remote import open_repository
from gateway.settings import build_settings
from gateway.observability.telemetry import Telemetry
s = build_settings({"repo": sys.argv[1], "inline_budget_us": sys.argv[2], "metrics": False}, {})
registry = ModelRegistry(s, open_repository(s.repo, s.cache_dir, refresh=False), ort_runtime, Telemetry(enabled=False))
print(registry.loader.build("breast_cancer", "1").batcher.inline_rows)
"""


def _inline_rows(demo_repo, budget_us: str, cpus: str | None) -> int:
    import subprocess
    import sys

    pin = ["taskset", "-c", cpus] if cpus is not None else []
    out = subprocess.run([*pin, sys.executable, "-c", _INLINE_ROWS, str(demo_repo), budget_us],
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset to pin a process to one CPU")
def test_on_one_cpu_every_cpu_batch_runs_inline(demo_repo):
    """Pinned to one CPU, a thread lane cannot run beside the event loop, so batches of
    every size run inline even when warm-up took longer than the inline budget."""
    assert _inline_rows(demo_repo, "1", "0") == 256  # 1 µs: no batch is within the budget
    assert _inline_rows(demo_repo, "0", "0") == 0  # a budget of 0 still means never
    if len(os.sched_getaffinity(0)) >= 2:
        assert _inline_rows(demo_repo, "1", None) == 0
