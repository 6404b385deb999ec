"""Named features to ONNX tensors: the one mapping shared by the converter's parity
check and the records API, so what is verified at build time is what serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from gateway.artifacts.manifest import Manifest, TensorSpec, V2DType

NUMPY_DTYPES: dict[V2DType, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    # numpy has no bfloat16 and ONNX Runtime's Python API exchanges none: BF16 tensors are
    # held as their raw 16-bit patterns (the binary wire layout), as floats only in JSON.
    "BF16": np.dtype(np.uint16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}


def to_bf16(values: np.ndarray) -> np.ndarray:
    """Float values as bfloat16 bit patterns, rounded to nearest even (as torch rounds)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns as the float32 values they stand for (exactly)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def all_finite(array: np.ndarray) -> bool:
    """No NaN or infinity: one reduction on the hot path (the sum of finite values is
    finite unless it overflows, and only then is the elementwise check paid)."""
    return math.isfinite(np.add.reduce(array, axis=None)) or bool(np.isfinite(array).all())


def non_finite_reason(dtype: np.dtype[np.generic]) -> str:
    """Why a number was refused: a huge finite one becomes infinity in a narrow float type."""
    if dtype.kind == "f" and dtype.itemsize < 8:
        limit = f"±{np.finfo(cast('np.dtype[np.floating[Any]]', dtype)).max:.3g}"
        return f"NaN, Infinity and numbers beyond {dtype.name}'s range ({limit}) are not accepted"
    return "NaN and Infinity are not accepted"


def missing_allowed(manifest: Manifest, spec: TensorSpec) -> np.ndarray | bool:
    """Where a V2 tensor may hold NaN: the features the model fills in itself, which the
    records API accepts as null (per column of a matrix input, or the whole column input)."""
    if manifest.layout == "matrix" and manifest.features and spec.name == manifest.inputs[0].name:
        return np.array([f.nullable for f in manifest.features])
    if manifest.layout == "columns":
        return next((f.nullable for f in manifest.features if f.name == spec.name), False)
    return False


def feeds_from_columns(manifest: Manifest, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrange 1-D feature columns (all of one length) as the model's input tensors."""
    if manifest.layout == "matrix":
        spec = manifest.inputs[0]
        matrix = np.column_stack([np.asarray(columns[f.name]) for f in manifest.features])
        return {spec.name: np.ascontiguousarray(matrix, dtype=NUMPY_DTYPES[spec.datatype])}
    if manifest.layout == "columns":
        feeds: dict[str, np.ndarray] = {}
        for spec in manifest.inputs:
            column = np.asarray(columns[spec.name]).reshape(-1, 1)
            if spec.datatype == "BYTES":
                column = column.astype(str).astype(object)
            feeds[spec.name] = column.astype(NUMPY_DTYPES[spec.datatype], copy=False)
        return feeds
    raise ValueError(f"model {manifest.name!r} has no tabular features; use the V2 API")


def columns_from_feeds(manifest: Manifest, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of `feeds_from_columns`: feature name to 1-D column (views, no copies)."""
    if manifest.layout == "matrix":
        matrix = feeds[manifest.inputs[0].name]
        return {f.name: matrix[:, i] for i, f in enumerate(manifest.features)}
    if manifest.layout == "columns":
        return {spec.name: feeds[spec.name].reshape(-1) for spec in manifest.inputs}
    return {}
