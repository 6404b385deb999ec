"""The bottom boundary: plain arrays in, plain arrays out. Knows nothing of HTTP.

`OrtRuntime` wraps one ONNX Runtime session on the chosen execution provider. `auto`
takes CUDA when onnxruntime-gpu sees a device, else the CPU; asking for CUDA where it
cannot start falls back to the CPU with a warning rather than refusing to serve.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gateway.artifacts.onnx_refs import ExternalDataError, check_external_data
from gateway.errors import InferenceFailed, first_line
from gateway.settings import Provider

log = logging.getLogger("gateway.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def check_rows(feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    """Every output has one row per input row: what the batcher slices answers by. The
    converter's parity check runs it too, so a graph that breaks it is refused at build
    time rather than answering 500 to every request."""
    rows = next(iter(feeds.values())).shape[0]
    for name, value in outputs.items():
        if value.shape[:1] != (rows,):
            raise InferenceFailed(f"output {name!r} has {value.shape[:1]} rows for {rows} inputs")


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


class ModelLoadError(RuntimeError):
    """An artifact ONNX Runtime refuses (corrupt graph, unsupported operator)."""


class _BoundRunner:
    """Runs through I/O binding: inputs copied into reused page-locked (pinned) host
    buffers, one per thread and shape, that the CUDA provider reads by DMA; outputs bound
    to host memory so they come back in one copy. With `pad`, a batch is padded to the next
    power of two so the device sees a handful of shapes (kernels, cuDNN plans and TensorRT
    engines are per shape), and the outputs are sliced back.
    """

    MAX_BUFFERS = 64

    def __init__(self, session: Any, output_names: list[str], device: str, device_id: int, pad: bool) -> None:
        self._session = session
        self._output_names = output_names
        self._host_device = "cuda_pinned" if device == "cuda" else "cpu"
        self._device_id = device_id
        self._pad = pad
        self._local = threading.local()

    def _buffer(self, name: str, array: np.ndarray) -> Any:
        import onnxruntime as ort

        buffers: dict[tuple[str, tuple[int, ...], str], Any] = self._local.__dict__.setdefault("buffers", {})
        key = (name, array.shape, array.dtype.str)
        value = buffers.get(key)
        if value is None:
            if len(buffers) >= self.MAX_BUFFERS:
                buffers.clear()
            value = buffers[key] = ort.OrtValue.ortvalue_from_shape_and_type(
                array.shape, array.dtype, self._host_device, self._device_id
            )
        value.update_inplace(np.ascontiguousarray(array))
        return value

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = next(iter(feeds.values())).shape[0]
        padded = _next_power_of_two(rows) if self._pad else rows
        binding = self._session.io_binding()
        for name, array in feeds.items():
            if padded != rows:
                filler = np.zeros((padded - rows, *array.shape[1:]), array.dtype)
                binding.bind_ortvalue_input(name, self._buffer(name, np.concatenate([array, filler])))
            else:
                binding.bind_ortvalue_input(name, self._buffer(name, array))
        for name in self._output_names:
            binding.bind_output(name, "cpu")
        self._session.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        return {
            n: o[:rows] if padded != rows else o for n, o in zip(self._output_names, outputs, strict=True)
        }


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class OrtRuntime:
    def __init__(
        self,
        model: bytes,
        *,
        provider: Provider = "auto",
        threads: int = 1,
        device_id: int = 0,
        name: str = "model",
        io_binding: bool | None = None,
    ) -> None:
        """`io_binding` defaults to on for CUDA; on the CPU it can be forced for tests."""
        import onnxruntime as ort

        try:
            # Given bytes, ONNX Runtime would resolve external data against the working
            # directory (or a memory address): the model must be self-contained.
            check_external_data(model)
        except ExternalDataError as exc:
            raise ModelLoadError(str(exc)) from None
        choice = choose_provider(provider, ort.get_available_providers())
        if choice.warning:
            log.warning(choice.warning, extra={"event": "provider_fallback", "model": name})
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = None
        if choice.name == "cuda":
            try:
                cuda_options = [{"device_id": device_id} if p == CUDA else {} for p in choice.providers]
                session = ort.InferenceSession(
                    model, sess_options=options, providers=choice.providers, provider_options=cuda_options
                )
            except Exception as exc:  # a driver or cuDNN that is missing fails here, not at import
                log.warning(f"CUDA provider failed to start ({first_line(exc)}); serving on CPU",
                            extra={"event": "provider_fallback", "model": name})  # fmt: skip
            if session is not None and CUDA not in session.get_providers():
                log.warning("CUDA provider failed to initialise; serving on CPU",
                            extra={"event": "provider_fallback", "model": name})  # fmt: skip
                session = None
            if session is None:
                choice = ProviderChoice([CPU], "cpu")
        if session is None:
            try:
                session = ort.InferenceSession(model, sess_options=options, providers=[CPU])
            # ONNX Runtime's own types (InvalidProtobuf, Fail...) are not RuntimeErrors.
            except Exception as exc:
                raise ModelLoadError(f"ONNX Runtime cannot load this model: {first_line(exc)}") from exc
        self._session = session
        self._output_names = [o.name for o in session.get_outputs()]
        self.provider = choice.name
        bind = choice.name == "cuda" if io_binding is None else io_binding
        # ONNX Runtime binds no string tensors; such models (text categories) run plainly,
        # their string ops being CPU-only anyway. BF16 ones run through OrtValues.
        values = [*session.get_inputs(), *session.get_outputs()]
        strings = any(v.type in ("tensor(string)", BF16) for v in values)
        self._bf16 = {v.name for v in values if v.type == BF16}
        self._bound = (
            _BoundRunner(session, self._output_names, choice.name, device_id, pad=choice.name == "cuda")
            if bind and not strings else None
        )  # fmt: skip

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._bound is not None:
            return self._bound.run(feeds)
        if self._bf16:
            return self._run_bf16(feeds)
        outputs = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outputs, strict=True))

    def _run_bf16(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """BF16 tensors in and out as their 16-bit patterns (uint16 arrays): ONNX Runtime's
        Python API has no numpy type for them, but takes and gives OrtValues."""
        import onnxruntime as ort

        values = {
            name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(array), _ONNX_BF16)
            if name in self._bf16 else ort.OrtValue.ortvalue_from_numpy(array)
            for name, array in feeds.items()
        }  # fmt: skip
        outputs = self._session.run_with_ort_values(self._output_names, values)
        return {
            name: _bf16_bits(value) if name in self._bf16 else value.numpy()
            for name, value in zip(self._output_names, outputs, strict=True)
        }


BF16 = "tensor(bfloat16)"
_ONNX_BF16 = 16  # onnx.TensorProto.BFLOAT16


def _bf16_bits(value: Any) -> np.ndarray:
    """A BF16 OrtValue's elements, copied out as uint16 bit patterns."""
    shape = tuple(value.shape())
    count = int(np.prod(shape))
    if count == 0:
        return np.zeros(shape, np.uint16)
    buffer = memoryview((ctypes.c_uint16 * count).from_address(value.data_ptr())).cast("B")
    bits: np.ndarray = np.frombuffer(buffer, np.uint16).copy()
    return bits.reshape(shape)
