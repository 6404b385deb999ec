"""Triton's reshape (a plain ONNX model converted with a config.pbtxt that has one): clients
send and receive a tensor in the configuration's dims, the graph runs it in its own. The
manifest keeps both: `TensorSpec.shape`, what clients see, and `TensorSpec.reshape`, the
graph's shape. Elements keep their order; only the dimensions change."""

from __future__ import annotations

import math

import numpy as np

from gateway.artifacts.manifest import Manifest, TensorSpec
from gateway.types import Arrays


def to_dims(array: np.ndarray, dims: list[int], batched: bool) -> np.ndarray:
    """`array` with `dims` after its batch dimension (where the model batches); the one
    variable dimension, if any, takes the elements the fixed ones leave."""
    lead = list(array.shape[:1]) if batched else []
    fixed = math.prod(lead) * math.prod(d for d in dims if d >= 0)
    target = lead + [d if d >= 0 else (array.size // fixed if fixed else 0) for d in dims]
    if math.prod(target) != array.size:
        raise ValueError(f"{array.size} elements do not fill the dims {dims}")
    return array.reshape(target)


def graph_dims(spec: TensorSpec, batched: bool) -> list[int]:
    """The graph's own dims after the batch dimension (`spec.reshape` is set)."""
    shape = spec.reshape if spec.reshape is not None else spec.shape
    return shape[1:] if batched else shape


def outputs_as_configured(manifest: Manifest, outputs: Arrays) -> Arrays:
    """The graph's outputs in the dims the configuration gives clients."""
    batched, specs = manifest.batched, {o.name: o for o in manifest.outputs if o.reshape is not None}
    return {
        name: to_dims(array, specs[name].shape[1:] if batched else specs[name].shape, batched)
        if name in specs
        else array
        for name, array in outputs.items()
    }
