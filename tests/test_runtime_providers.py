"""Provider choice and CPU fallback run everywhere; CUDA cases run where a GPU is present."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

from gateway.repository import Repository
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
    assert out["variable"].shape == (3, 1)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_runtime_matches_cpu(demo_repo):
    _, data = Repository(demo_repo).load_verified("breast_cancer", "1")
    x = np.random.default_rng(0).normal(size=(64, 30)).astype(np.float32)
    gpu = OrtRuntime(data, provider="cuda").run({"input": x})
    cpu = OrtRuntime(data, provider="cpu").run({"input": x})
    np.testing.assert_allclose(gpu["probabilities"], cpu["probabilities"], atol=1e-5)
