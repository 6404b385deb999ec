"""V2 requests decoded into the model's feeds.

Inputs are checked against the ONNX signature (names, datatypes, ranks, fixed dimensions,
element counts) before they are queued.
"""

from __future__ import annotations

import math
import struct
from typing import Any, NamedTuple

import msgspec
import numpy as np

from gateway.artifacts.manifest import Manifest, TensorSpec
from gateway.artifacts.tabular import (
    NUMPY_DTYPES,
    all_finite,
    missing_allowed,
    non_finite_reason,
    to_bf16,
)
from gateway.errors import BadRequest, NotFound, TooLarge, Unprocessable
from gateway.types import Arrays
from gateway.v2.data import _check_raw_data, _json_array, _Plan
from gateway.v2.messages import (
    ID_LIMIT,
    MAX_BYTES_ELEMENTS,
    MAX_DATA_ELEMENTS,
    MAX_ELEMENT_BYTES,
    MAX_TIMEOUT_US,
    DecodedInfer,
    InferRequest,
    Tensor,
)
from gateway.v2.parse import _clip, _ParsedRequest
from gateway.v2.reshape import graph_dims, to_dims

_LENGTH = struct.Struct("<I")


def _bytes_elements(raw: bytes, count: int, loc: list[Any]) -> np.ndarray:
    """BYTES elements (a 4-byte little-endian length, then the bytes). `count` was checked
    against the element limit and against what `raw` can hold before this allocates."""
    out = np.empty(count, dtype=object)
    pos, end, unpack = 0, len(raw), _LENGTH.unpack_from
    for i in range(count):
        if pos + 4 > end:
            raise Unprocessable("truncated BYTES tensor", [{"loc": loc, "msg": "too few elements"}])
        (size,) = unpack(raw, pos)
        pos += 4
        if pos + size > end:
            raise Unprocessable("truncated BYTES tensor", [{"loc": loc, "msg": "element overruns"}])
        out[i] = raw[pos : pos + size].decode("utf-8", errors="replace")
        pos += size
    if pos != end:
        raise Unprocessable("BYTES tensor has trailing bytes", [{"loc": loc, "msg": "size mismatch"}])
    return out


def _check_shape(tensor: Tensor, spec: TensorSpec, loc: list[Any], max_rows: int) -> int:
    """The element count the declared shape implies, refused before anything is allocated."""
    if tensor.datatype != spec.datatype:
        raise Unprocessable(
            f"input {spec.name!r} must be {spec.datatype}",
            [{"loc": [*loc, "datatype"], "msg": f"expected {spec.datatype}, got {_clip(tensor.datatype)}"}],
        )
    shape = tensor.shape
    if shape and min(shape) < 0:
        raise BadRequest(
            f"input {spec.name!r} has a negative dimension in shape {_clip(shape)}",
            [{"loc": [*loc, "shape"], "msg": "dimensions are sizes: 0 or more"}],
        )
    fits = spec.any_shape or len(shape) == len(spec.shape)
    if fits and not spec.any_shape:  # a loop, not any(<generator>): this runs on every request
        for d, want in zip(shape, spec.shape, strict=True):
            if want >= 0 and d != want:
                fits = False
                break
    if not fits:
        raise Unprocessable(
            f"input {spec.name!r} has shape {_clip(shape)}; the model takes {spec.shape} (-1: any size)",
            [{"loc": [*loc, "shape"], "msg": f"expected {spec.shape}"}],
        )
    rows = shape[0] if shape and spec.shape[:1] == [-1] else 1  # a fixed first dim is no row count
    if rows > max_rows:
        raise TooLarge(f"{_clip(rows)} rows in one request; the limit is {max_rows}")
    # Python integers: a huge declared shape cannot overflow here. Zero elements are a
    # tensor like any other (Triton runs them); `data` of [[],[],...] is bounded by bytes.
    count = math.prod(shape)
    if count >= _U64 // 8:  # 8: the widest element; one comparison on the hot path
        _check_overflow(spec, shape, count, loc)
    return count


_U64 = 2**64


def _check_overflow(spec: TensorSpec, shape: list[int], count: int, loc: list[Any]) -> None:
    """Dimensions of 64 bits whose product no 64-bit count holds: Triton's 400s, in its
    words. A dimension beyond 64 bits is no shape Triton parses: it stays the size refusal
    the data check gives it (413, 422)."""
    if max(shape) >= _U64 // 2:
        return
    where = [{"loc": [*loc, "shape"], "msg": "too many elements"}]
    if count >= _U64:
        raise BadRequest(
            f"input {spec.name!r} shape {_clip(shape)} causes total element count to exceed maximum "
            f"size of {_U64 - 1}",
            where,
        )
    if spec.datatype != "BYTES" and count * NUMPY_DTYPES[spec.datatype].itemsize >= _U64:
        raise BadRequest(f"byte size overflow for input {spec.name!r} of shape {_clip(shape)}", where)


def _plan(tensor: Tensor, spec: TensorSpec, index: int, offset: int, tail: bytes, max_rows: int,
          max_bytes_elements: int, raw: msgspec.Raw | None, msgpack: bool,
          rows_then: dict[str, tuple[list[int], int]]) -> _Plan:  # fmt: skip
    loc: list[Any] = ["body", "inputs", index]
    shape, fixed = tensor.shape, rows_then.get(spec.name)
    if (
        fixed is not None and tensor.datatype == spec.datatype and len(shape) == len(spec.shape)
        and 0 <= shape[0] <= max_rows and shape[1:] == fixed[0]
    ):  # fmt: skip
        count = shape[0] * fixed[1]  # rows of the signature's own fixed shape: nothing to explain
    else:
        count = _check_shape(tensor, spec, loc, max_rows)
    size = (tensor.parameters or {}).get("binary_data_size")
    has_data = tensor.data is not None or raw is not None
    if size is None:
        if not has_data:
            raise Unprocessable("input has no data", [{"loc": [*loc, "data"], "msg": "missing"}])
        if spec.datatype == "BYTES" and count > max_bytes_elements:
            raise TooLarge(f"{_clip(count)} BYTES elements in one input; the limit is {max_bytes_elements}")
        if raw is not None and spec.datatype != "BYTES":
            _check_raw_data(bytes(raw), tensor.shape, count, msgpack, loc)
        return _Plan(tensor, spec, loc, count, None, raw, msgpack)
    where = [*loc, "parameters", "binary_data_size"]
    if has_data:
        raise Unprocessable(
            "an input carries either data or binary_data_size, not both",
            [{"loc": [*loc, "data"], "msg": "remove data, or binary_data_size"}],
        )
    if type(size) is not int:
        raise Unprocessable(
            "binary_data_size must be an integer", [{"loc": where, "msg": f"got {_clip(size)}"}]
        )
    if size < 0 or offset + size > len(tail):  # Triton: 400, as for any size that overflows
        raise BadRequest(
            "binary_data_size overruns the body", [{"loc": where, "msg": "outside the binary part"}]
        )
    if spec.datatype == "BYTES":
        if count > max_bytes_elements:
            raise TooLarge(f"{_clip(count)} BYTES elements in one input; the limit is {max_bytes_elements}")
        if 4 * count > size:
            raise Unprocessable(
                "binary tensor size does not match its shape",
                [{"loc": where, "msg": f"{size} bytes cannot hold {_clip(count)} BYTES elements"}],
            )
    elif size != count * NUMPY_DTYPES[spec.datatype].itemsize:
        raise Unprocessable(
            "binary tensor size does not match its shape",
            [{"loc": where, "msg": f"expected {_clip(count * NUMPY_DTYPES[spec.datatype].itemsize)} bytes "
                                   f"for shape {_clip(tensor.shape)}"}],
        )  # fmt: skip
    return _Plan(tensor, spec, loc, count, (offset, size))


def _tensor_array(plan: _Plan, tail: bytes, manifest: Manifest) -> np.ndarray:
    spec, loc = plan.spec, plan.loc
    finite = False
    if plan.binary is None:
        array, finite = _json_array(plan)
    else:
        offset, size = plan.binary
        raw = tail[offset : offset + size]
        if spec.datatype == "BYTES":
            array = _bytes_elements(raw, plan.count, loc)
        else:
            dtype = NUMPY_DTYPES[spec.datatype]
            array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    array = array.reshape(plan.tensor.shape)
    if spec.reshape is not None:  # Triton's reshape: the graph's own dims
        array = _to_graph(array, spec, manifest.batched, loc)
    # NaN is a missing value where the model fills it in (the records API's null); infinity,
    # and NaN anywhere else, never.
    refused = not finite and array.dtype.kind == "f" and not all_finite(array)
    missing = missing_allowed(manifest, spec) if refused else False
    if refused and bool((~np.isfinite(array) & ~(np.isnan(array) & missing)).any()):
        raise Unprocessable(
            "non-finite number", [{"loc": [*loc, "data"], "msg": non_finite_reason(array.dtype)}]
        )
    if spec.datatype == "BF16":  # JSON floats to bit patterns; binary ones: all exponent bits set
        array = to_bf16(array) if array.dtype.kind == "f" else array
        if bool(((array & 0x7F80) == 0x7F80).any()):
            raise Unprocessable(
                "non-finite number", [{"loc": [*loc, "data"], "msg": "NaN and Infinity are not accepted"}]
            )
    return array


def _check_request(request: InferRequest) -> None:
    if request.id is not None and len(request.id) > ID_LIMIT:
        raise Unprocessable(
            f"id is longer than {ID_LIMIT} characters", [{"loc": ["body", "id"], "msg": "too long"}]
        )
    timeout = (request.parameters or {}).get("timeout")
    # 0 is Triton's "no timeout", which tritonclient sends unless told otherwise.
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 <= timeout < MAX_TIMEOUT_US
    ):
        raise BadRequest("timeout must be a number of microseconds, 0 (none) or positive and under a day")


class _Signature(NamedTuple):
    manifest: Manifest  # kept so that an id is never reused while the entry lives
    specs: dict[str, TensorSpec]  # the inputs by name
    outputs: frozenset[str]
    order: tuple[str, ...]  # the inputs' names as declared: what nearly every client sends
    batched: bool
    # Inputs shaped [-1, fixed...]: their fixed dimensions and the elements of one row.
    rows_then: dict[str, tuple[list[int], int]]


_SIGNATURES: dict[int, _Signature] = {}


def _signature(manifest: Manifest) -> _Signature:
    """What every request reads of its manifest, built once per loaded manifest, not per
    request (keyed by identity)."""
    entry = _SIGNATURES.get(id(manifest))
    if entry is None or entry.manifest is not manifest:
        if len(_SIGNATURES) >= 256:  # versions come and go: the oldest are long unloaded
            _SIGNATURES.clear()
        entry = _SIGNATURES[id(manifest)] = _Signature(
            manifest, {s.name: s for s in manifest.inputs}, frozenset(o.name for o in manifest.outputs),
            tuple(s.name for s in manifest.inputs), manifest.batched,
            {s.name: (s.shape[1:], math.prod(s.shape[1:])) for s in manifest.inputs
             if not s.any_shape and s.shape[:1] == [-1] and all(d >= 0 for d in s.shape[1:])},
        )  # fmt: skip
    return entry


def decode_infer(
    manifest: Manifest, request: InferRequest, tail: bytes, max_rows: int,
    max_bytes_elements: int = MAX_BYTES_ELEMENTS,
) -> DecodedInfer:  # fmt: skip
    """Validate every declared size of every input first, then decode the data: the
    model's feeds and the request's rows."""
    _check_request(request)
    signature = _signature(manifest)
    specs, known = signature.specs, signature.outputs
    names = tuple(t.name for t in request.inputs) if len(request.inputs) != 1 else (request.inputs[0].name,)
    if names != signature.order and (
        len(names) != len(specs) or not all(n in specs for n in names) or len(set(names)) != len(names)
    ):
        missing, unknown = sorted(set(specs) - set(names)), sorted(set(names) - set(specs))
        raise Unprocessable(
            "inputs do not match the model",
            [
                {
                    "loc": ["body", "inputs"],
                    "msg": f"model inputs are {sorted(specs)}; missing {missing}, "
                    f"unknown {_clip(unknown[:8])}",
                }
            ],
        )
    plans: list[_Plan] = []
    offset = elements = 0
    parsed = isinstance(request, _ParsedRequest)
    raws = request.raw_data if parsed else [None] * len(request.inputs)  # type: ignore[attr-defined]
    msgpack = parsed and request.msgpack  # type: ignore[attr-defined]
    for index, tensor in enumerate(request.inputs):
        plan = _plan(tensor, specs[tensor.name], index, offset, tail, max_rows, max_bytes_elements,
                     raws[index], msgpack, signature.rows_then)  # fmt: skip
        if plan.binary is not None:
            offset += plan.binary[1]
        elif plan.spec.datatype != "BYTES":
            elements += plan.count
        plans.append(plan)
    if offset != len(tail):
        raise BadRequest(f"{len(tail) - offset} unclaimed bytes after the binary tensors")
    if elements > MAX_DATA_ELEMENTS:
        raise TooLarge(
            f"{_clip(elements)} elements as data in one request; the limit is {MAX_DATA_ELEMENTS}: "
            "send larger tensors as binary data (binary_data_size, or raw_input_contents)"
        )
    # A model without a batch dimension takes each request as one whole call: one "row".
    if len(plans) == 1:  # the usual request: nothing to agree on
        rows = plans[0].tensor.shape[0] if signature.batched else 1
    else:
        rows_by_input = {p.tensor.shape[0] for p in plans} if signature.batched else {1}
        if len(rows_by_input) != 1:
            raise Unprocessable(
                "inputs disagree on the batch size",
                [{"loc": ["body", "inputs"], "msg": "every input's first dimension must match"}],
            )
        rows = rows_by_input.pop()
    if request.outputs is not None:
        seen: set[str] = set()
        for i, out in enumerate(request.outputs):
            if out.name not in known:
                raise NotFound(
                    f"model has no output {_clip(out.name)}; it has {sorted(known)}",
                    [{"loc": ["body", "outputs", i, "name"], "msg": "unknown output"}],
                )
            if out.name in seen:  # each copy would be encoded again; Triton's words first
                raise BadRequest(
                    f"output {out.name!r} already exists in request: it is requested more than once",
                    [{"loc": ["body", "outputs", i, "name"], "msg": "repeated output"}],
                )
            seen.add(out.name)
    if len(plans) == 1:
        feeds: Arrays = {plans[0].tensor.name: _tensor_array(plans[0], tail, manifest)}
    else:
        feeds = {p.tensor.name: _tensor_array(p, tail, manifest) for p in plans}
    # tuple.__new__ straight: a NamedTuple's own __new__ is a Python call (~0.2 us) per request.
    return tuple.__new__(DecodedInfer, (feeds, rows))


def _to_graph(array: np.ndarray, spec: TensorSpec, batched: bool, loc: list[Any]) -> np.ndarray:
    dims = graph_dims(spec, batched)
    try:
        return to_dims(array, dims, batched)
    except ValueError:
        raise Unprocessable(
            f"input {spec.name!r} of shape {list(array.shape)} does not reshape to the model's {dims}",
            [{"loc": [*loc, "shape"], "msg": f"expected {spec.shape}"}],
        ) from None


def body_bound(manifest: Manifest, max_rows: int) -> int | None:
    """The most bytes a valid V2 request for this model can need (JSON, numbers spelt out
    long, plus a header's worth), or None when an input's size has no bound (BYTES, or a
    variable dimension after the first). Bodies beyond it are refused by their declared
    length before a byte is read: no parse of megabytes that cannot be valid."""
    total = 64 * 1024
    rows = max_rows if manifest.batched else 1
    for spec in manifest.inputs:
        row = spec.shape[1:] if manifest.batched else spec.shape
        if spec.datatype == "BYTES" or spec.any_shape or any(d < 0 for d in row):
            return None
        total += rows * math.prod(row) * MAX_ELEMENT_BYTES
    return total
