"""The bottom boundary: plain arrays in, plain arrays out. Knows nothing of HTTP.

`OrtRuntime` wraps one ONNX Runtime session on the chosen execution provider. `auto`
takes CUDA when onnxruntime-gpu sees a device, else the CPU; asking for CUDA where it
cannot start falls back to the CPU with a warning rather than refusing to serve.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gateway.settings import Provider

log = logging.getLogger("gateway.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class Runtime(Protocol):
    """What the batcher needs: run a batch, say where it runs."""

    provider: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class ProviderChoice:
    providers: list[str]
    name: str  # "cpu" or "cuda", for logs, metrics and metadata
    warning: str | None = None


def choose_provider(requested: Provider, available: Sequence[str]) -> ProviderChoice:
    """Pure decision, tested without a GPU: which providers to hand the session."""
    has_cuda = CUDA in available
    if requested == "cpu":
        return ProviderChoice([CPU], "cpu")
    if has_cuda:
        return ProviderChoice([CUDA, CPU], "cuda")
    if requested == "cuda":
        return ProviderChoice(
            [CPU],
            "cpu",
            "CUDA was requested but onnxruntime has no CUDAExecutionProvider here "
            "(install onnx-gateway[gpu] on a machine with an NVIDIA driver); serving on CPU",
        )
    return ProviderChoice([CPU], "cpu")


class OrtRuntime:
    def __init__(
        self,
        model: bytes,
        *,
        provider: Provider = "auto",
        threads: int = 1,
        device_id: int = 0,
        name: str = "model",
    ) -> None:
        import onnxruntime as ort

        choice = choose_provider(provider, ort.get_available_providers())
        if choice.warning:
            log.warning(choice.warning, extra={"event": "provider_fallback", "model": name})
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        provider_options: list[dict[str, Any]] = [
            {"device_id": device_id} if p == CUDA else {} for p in choice.providers
        ]
        session = ort.InferenceSession(
            model,
            sess_options=options,
            providers=choice.providers,
            provider_options=provider_options,
        )
        active = session.get_providers()
        if choice.name == "cuda" and CUDA not in active:
            log.warning(
                "CUDA provider failed to initialise; serving on CPU",
                extra={"event": "provider_fallback", "model": name},
            )
            choice = ProviderChoice([CPU], "cpu")
        self._session = session
        self._output_names = [o.name for o in session.get_outputs()]
        self.provider = choice.name

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outputs, strict=True))
