"""Triton's model configuration (config.pbtxt) of a plain ONNX model: what of it the
gateway honours, read once at convert and kept in the manifest (a served version reads
nothing beside its artifact).

Honoured: `max_batch_size` (0: the graph's first dimension is not a batch dimension, even
where it is variable, which the graph alone cannot tell), `dims` that fix what the graph
leaves variable, an output's `label_filename`, and `reshape` (clients use the
configuration's dims, the graph its own). Refused, rather than served differently from
Triton: a configuration for another backend, inputs or outputs the graph does not have or
whose dims disagree with it, and a reshape of more than one variable dimension. Other
fields (instance_group, dynamic_batching, ...) have the serve flags' equivalents and are
not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from converters.errors import ConversionError
from gateway.artifacts.manifest import TensorSpec

_ONNX_PLATFORMS = ("", "onnxruntime_onnx")
_ONNX_BACKENDS = ("", "onnxruntime")


@dataclass(frozen=True)
class TritonConfig:
    path: Path
    max_batch_size: int
    labels: dict[str, Path] = field(default_factory=dict)  # output -> its label_filename
    # Every input and output the configuration names: its dims (no batch dimension), and
    # the graph's own dims where it asks for a reshape.
    tensors: dict[str, tuple[list[int], list[int] | None]] = field(default_factory=dict)

    @property
    def reshapes(self) -> bool:
        return any(reshape is not None for _, reshape in self.tensors.values())


def _model_config() -> Any:
    """A ModelConfig message. Where Triton's own client already registered `inference.*` in
    protobuf's default pool (a notebook, a test), gateway.proto cannot register them again:
    that registration, a superset of ours, is used instead."""
    from google.protobuf import descriptor_pool, message_factory

    try:
        found = descriptor_pool.Default().FindMessageTypeByName("inference.ModelConfig")
    except KeyError:
        from gateway.proto import model_config_pb2

        return model_config_pb2.ModelConfig()
    return message_factory.GetMessageClass(found)()


def read_triton_config(path: Path) -> TritonConfig:
    from google.protobuf import text_format

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"cannot read the Triton configuration {path}: {exc}") from exc
    try:
        # Fields the gateway has no use for (instance_group, optimization, ...) are skipped.
        config: Any = text_format.Parse(text, _model_config(), allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ConversionError(f"{path} is not a Triton model configuration: {exc}") from exc
    if config.platform not in _ONNX_PLATFORMS or config.backend not in _ONNX_BACKENDS:
        raise ConversionError(
            f"{path} configures {config.platform or config.backend!r}, not an ONNX Runtime model"
        )
    if config.max_batch_size < 0:
        raise ConversionError(f"{path}: max_batch_size is {config.max_batch_size}; it cannot be negative")
    labels = {o.name: Path(path).parent / o.label_filename for o in config.output if o.label_filename}
    tensors = {
        t.name: (list(t.dims), list(t.reshape.shape) if t.HasField("reshape") else None)
        for t in [*config.input, *config.output]
    }
    return TritonConfig(Path(path), config.max_batch_size, labels, tensors)


def check_against_graph(config: TritonConfig, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """A configuration that names what the graph lacks, or batches what cannot be batched,
    would be served differently from Triton: refused, saying which tensor."""
    specs = {s.name: s for s in [*inputs, *outputs]}
    unknown = [n for n in config.tensors if n not in specs]
    if unknown:
        raise ConversionError(
            f"{config.path} names {unknown}, which the graph does not have; it has {sorted(specs)}"
        )
    if config.max_batch_size > 0:
        fixed = [s.name for s in specs.values() if s.any_shape or not s.shape or s.shape[0] != -1]
        if fixed:
            raise ConversionError(
                f"{config.path}: max_batch_size {config.max_batch_size} needs a variable first "
                f"(batch) dimension on every input and output; {fixed} have none"
            )
    skip = 1 if config.max_batch_size > 0 else 0
    for name, (dims, reshape) in config.tensors.items():
        graph = specs[name].shape[skip:]
        runs = dims if reshape is None else reshape  # what the graph is given
        if not specs[name].any_shape and not _compatible(runs, graph):
            what = f"dims {dims}" if reshape is None else f"reshape {reshape}"
            raise ConversionError(
                f"{config.path}: {name!r} has {what}; the graph's are {graph} (-1: any size)"
            )
        if reshape is not None:
            _check_reshape(config.path, name, dims, reshape)


def _check_reshape(path: Path, name: str, dims: list[int], reshape: list[int]) -> None:
    """A reshape the gateway can do whatever the request: one variable dimension at most on
    either side (it takes what the fixed ones leave), the same elements where all are fixed."""
    if sum(d < 0 for d in dims) > 1 or sum(d < 0 for d in reshape) > 1:
        raise ConversionError(
            f"{path}: {name!r} reshapes {dims} to {reshape}: one variable dimension at most"
        )
    if min([*dims, *reshape], default=0) >= 0 and math.prod(dims) != math.prod(reshape):
        raise ConversionError(
            f"{path}: {name!r} reshapes {dims} to {reshape}, which hold other element counts"
        )


def narrowed(config: TritonConfig, specs: list[TensorSpec]) -> list[TensorSpec]:
    """The specs with the configuration's dims where they fix what the graph leaves
    variable: Triton checks requests against its configuration, so the gateway does too."""
    skip = 1 if config.max_batch_size > 0 else 0
    out = []
    for spec in specs:
        dims, reshape = config.tensors.get(spec.name, (None, None))
        if dims is None or (spec.any_shape and reshape is None):
            out.append(spec)
            continue
        lead = [-1] * skip
        runs = reshape if reshape is not None else dims
        graph = (
            runs
            if spec.any_shape
            else [g if c < 0 else c for c, g in zip(runs, spec.shape[skip:], strict=True)]
        )
        if reshape is None:
            out.append(msgspec.structs.replace(spec, shape=lead + graph))
        else:  # clients see the configuration's dims; the graph is given its own
            out.append(
                msgspec.structs.replace(spec, shape=lead + dims, reshape=lead + graph, any_shape=False)
            )
    return out


def _compatible(dims: list[int], graph: list[int]) -> bool:
    return len(dims) == len(graph) and all(d == g or -1 in (d, g) for d, g in zip(dims, graph, strict=True))
