"""V2 `data` (JSON, msgpack or already-parsed values) decoded into typed arrays, bounded by
the declared shape before a value is read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import GenericAlias
from typing import Annotated, Any

import msgspec
import numpy as np

from gateway.artifacts.floats import msgpack_length
from gateway.artifacts.manifest import TensorSpec
from gateway.artifacts.tabular import (
    NUMPY_DTYPES,
)
from gateway.errors import BadRequest, Unprocessable, validation_detail
from gateway.v2.messages import (
    MAX_ELEMENT_BYTES,
    Tensor,
)
from gateway.v2.parse import _clip


def _element_type(datatype: str) -> Any:
    """What one JSON element of `datatype` must be: strict, so "1e5", true, null or an
    object is refused where a number is expected, and a number where a string is."""
    if datatype == "BYTES":
        return str
    if datatype == "BOOL":
        return bool
    if datatype.startswith("FP") or datatype == "BF16":
        return float
    info = np.iinfo(NUMPY_DTYPES[datatype].type)  # type: ignore[index,type-var]
    # msgspec bounds must fit in an int64; numpy refuses what overflows beyond that.
    return Annotated[int, msgspec.Meta(ge=max(int(info.min), -(2**63)), le=min(int(info.max), 2**63 - 1))]


@functools.cache
def _data_type(datatype: str, depth: int) -> Any:
    """`data` as a list nested `depth` deep of `datatype` elements."""
    kind = _element_type(datatype)
    for _ in range(depth):
        kind = GenericAlias(list, (kind,))
    return kind


@dataclass(slots=True)
class _Plan:
    """One input whose declared sizes passed every limit: only now is anything decoded."""

    tensor: Tensor
    spec: TensorSpec
    loc: list[Any]
    count: int
    binary: tuple[int, int] | None  # (offset, size) in the binary tail
    raw: msgspec.Raw | None = None  # JSON or msgpack `data`, not decoded yet
    msgpack: bool = False


def _check_raw_data(raw: bytes, shape: list[int], count: int, msgpack: bool, loc: list[Any]) -> None:
    """Refuse `data` (of the input at `loc`) whose bytes cannot be `shape`'s numbers, before
    a value is decoded.

    Every number takes at least a byte, and at most MAX_ELEMENT_BYTES as JSON. A JSON
    array of `count` numbers, flat or nested as the shape, holds exactly count - 1 commas
    and one `[` per list of the shape: beyond those, the data holds more values (or empty
    lists) than the shape, and each would be a Python object. msgpack states each array's
    length in its header, which the shape-bounded decoder checks before reading on."""
    size = len(raw)
    if size > count * MAX_ELEMENT_BYTES + 4096 or count > size:
        raise Unprocessable(
            f"data is {'larger' if size > count else 'smaller'} than its shape",
            [{"loc": [*loc, "data"], "msg": f"{size} bytes for {_clip(count)} elements"}],
        )
    if msgpack:
        # The outer array's header, read here, bounds a flat decode; a nested one is bounded
        # level by level by its decoder.
        too_many = msgpack_length(raw) > count
    else:
        lists = level = 1  # the lists of a tensor of this shape: 1, then d0, d0 * d1, ...
        for d in shape[:-1]:
            level *= d
            lists += level
        # count - 1 commas between values; with none, at most one between each empty list
        too_many = raw.count(b",") >= (count or lists) or raw.count(b"[") > lists
    if too_many:
        raise Unprocessable(
            "data does not fit its shape",
            [{"loc": [*loc, "data"], "msg": f"more values or lists than shape {_clip(shape)} holds"}],
        )


def _data_decoder(datatype: str, shape: tuple[int, ...], msgpack: bool) -> Any:
    """`datatype` values nested as `shape` (one dimension: flat). The raw checks bounded a
    flat decode, and JSON's nesting too: one decoder per depth. Nested msgpack is bounded
    level by level: each list no longer than its dimension, which msgspec checks from the
    header before reading the items."""
    if msgpack and len(shape) > 1:
        return _nested_msgpack_decoder(datatype, shape)
    return _plain_data_decoder(datatype, len(shape), msgpack)


@functools.cache
def _plain_data_decoder(datatype: str, depth: int, msgpack: bool) -> Any:
    kind = _data_type(datatype, depth)
    return msgspec.msgpack.Decoder(kind) if msgpack else msgspec.json.Decoder(kind)


@functools.lru_cache(maxsize=64)
def _nested_msgpack_decoder(datatype: str, shape: tuple[int, ...]) -> Any:
    kind = _element_type(datatype)
    for size in reversed(shape):
        kind = Annotated[GenericAlias(list, (kind,)), msgspec.Meta(max_length=size)]
    return msgspec.msgpack.Decoder(kind)


def _typed_values(plan: _Plan) -> tuple[Any, bool]:
    """`data` as typed Python values, and whether it was nested. From the wire, a typed
    decode: it stops at the first element of the wrong kind, whatever follows."""
    spec, rank = plan.spec, len(plan.tensor.shape)
    if plan.raw is None:
        data = plan.tensor.data or []
        nested = bool(data) and isinstance(data[0], list)
        return msgspec.convert(data, _data_type(spec.datatype, rank if nested else 1)), nested
    if spec.datatype == "BYTES":
        # Strings have no byte bound per element: a fixed-length type stops the decode at
        # element count + 1 (msgspec checks as it goes), not after 5 M empty strings.
        flat: tuple[int, ...] = (plan.count,)
        try:
            return _bytes_decoder(flat, plan.msgpack).decode(plan.raw), False
        except msgspec.ValidationError as exc:
            if rank < 2 or not str(exc).endswith("got `array` - at `$[0]`"):
                raise
        return _bytes_decoder(tuple(plan.tensor.shape), plan.msgpack).decode(plan.raw), True
    try:
        return _plain_data_decoder(spec.datatype, 1, plan.msgpack).decode(plan.raw), False
    except msgspec.ValidationError as exc:
        if rank < 2 or not str(exc).endswith("got `array` - at `$[0]`"):
            raise
    return _data_decoder(spec.datatype, tuple(plan.tensor.shape), plan.msgpack).decode(plan.raw), True


@functools.lru_cache(maxsize=32)
def _bytes_decoder(shape: tuple[int, ...], msgpack: bool) -> Any:
    """BYTES data of exactly this shape, as nested tuples of strings."""
    kind: Any = str
    for size in reversed(shape):
        kind = GenericAlias(tuple, (kind,) * size)
    return msgspec.msgpack.Decoder(kind) if msgpack else msgspec.json.Decoder(kind)


_FLOAT_LIMITS = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max)}


@functools.cache
def _in_range_decoder(datatype: str) -> Any:
    """Flat JSON data of a narrow float type with every value within its range, checked by
    msgspec as it decodes: nothing left for Python to compare afterwards."""
    limit = _FLOAT_LIMITS[datatype if datatype != "BF16" else "FP32"]
    return msgspec.json.Decoder(list[Annotated[float, msgspec.Meta(ge=-limit, le=limit)]])


def _in_range(plan: _Plan) -> list[float] | None:
    """Flat JSON `data` of FP16, FP32 or BF16 whose every value is within the type's range
    (the usual request), or None: then the general decode below says what it is."""
    datatype = plan.spec.datatype
    if plan.raw is None or plan.msgpack or (datatype not in _FLOAT_LIMITS and datatype != "BF16"):
        return None
    try:
        values: list[float] = _in_range_decoder(datatype).decode(plan.raw)
    except msgspec.DecodeError:  # ValidationError included: nested, another type, out of range
        return None
    return values


def _checked_values(plan: _Plan, dtype: np.dtype[Any]) -> tuple[Any, bool, bool]:
    """`data` as typed Python values, whether nested, and whether known finite."""
    spec, loc = plan.spec, plan.loc
    try:
        values, nested = _typed_values(plan)
    except msgspec.ValidationError as exc:
        detail = validation_detail(str(exc), "data")[0]
        where = "".join(f"[{i}]" for i in detail["loc"][1:])
        raise Unprocessable(
            f"input {spec.name!r}: data must hold {spec.datatype} values, flat or nested as its shape",
            [{"loc": [*loc, "data"], "msg": f"{detail['msg']} at data{where}"}],
        ) from None
    except msgspec.DecodeError:  # after ValidationError, its subclass
        raise BadRequest(f"input {spec.name!r}: malformed data") from None
    # JSON spells no NaN or infinity (msgspec refuses them and 1e400): flat JSON floats
    # are finite, and within a narrow float's range they stay so. Checked here on the
    # Python floats, not on the array: the common request skips two array passes.
    finite = dtype.kind == "f" and plan.raw is not None and not plan.msgpack and not nested
    if finite and values and dtype.itemsize < 8:
        limit = _FLOAT_LIMITS[spec.datatype if spec.datatype != "BF16" else "FP32"]
        finite = -limit <= min(values) and max(values) <= limit
    return values, nested, finite


def _json_array(plan: _Plan) -> tuple[np.ndarray, bool]:
    """The data as an array, and whether it is known finite without looking again."""
    tensor, spec, loc = plan.tensor, plan.spec, plan.loc
    # BF16 arrives as floats and becomes bit patterns once checked (_tensor_array).
    dtype = np.dtype(np.float32) if spec.datatype == "BF16" else NUMPY_DTYPES[spec.datatype]
    values: Any = _in_range(plan)
    if values is not None:  # flat, finite and within range: nothing left to check
        nested, finite = False, True
    else:
        values, nested, finite = _checked_values(plan, dtype)
    try:
        if dtype.kind == "f" and dtype.itemsize < 8 and not finite:
            with np.errstate(over="ignore"):  # beyond a narrow float's range: refused below, with reason
                array = np.asarray(values, dtype=dtype)
        else:
            array = np.asarray(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise Unprocessable(
            f"input {spec.name!r}: data is not a regular {spec.datatype} array",
            [{"loc": [*loc, "data"], "msg": f"expected {spec.datatype} values, nested as the shape"}],
        ) from None
    if nested and array.shape != tuple(tensor.shape):
        raise Unprocessable(
            "data is nested differently from its shape",
            [{"loc": [*loc, "data"], "msg": f"nested as {array.shape} for shape {_clip(tensor.shape)}"}],
        )
    if array.size != plan.count:
        raise Unprocessable(
            "element count does not match shape",
            [{"loc": [*loc, "data"], "msg": f"{array.size} elements for shape {_clip(tensor.shape)}"}],
        )
    return array, finite
