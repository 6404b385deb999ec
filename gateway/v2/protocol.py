"""Open Inference Protocol (KServe V2) tensors: JSON and the binary tensor extension.

Inputs are checked against the ONNX signature (names, datatypes, ranks, fixed dimensions,
element counts) before they are queued.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from types import GenericAlias
from typing import Annotated, Any, NamedTuple

import msgspec
import numpy as np
import orjson

from gateway.artifacts.floats import msgpack_length
from gateway.artifacts.manifest import Manifest, TensorSpec
from gateway.artifacts.tabular import (
    NUMPY_DTYPES,
    all_finite,
    from_bf16,
    missing_allowed,
    non_finite_reason,
    to_bf16,
)
from gateway.errors import BadRequest, NotFound, TooLarge, Unprocessable, clip, validation_detail
from gateway.types import Arrays

BINARY_HEADER = "inference-header-content-length"
# Limits on what a client declares, checked before anything is allocated or looped over.
ID_LIMIT = 256  # characters of a request id (it is echoed in the answer)
MAX_BYTES_ELEMENTS = 65_536  # BYTES elements per input: each becomes a Python string
# Elements of one request's inputs sent as JSON/msgpack `data` (or gRPC typed contents):
# each becomes a Python number (~32 bytes) before it is an array, so a body of "0,0,..."
# would otherwise take 16 times its size. Larger tensors travel as binary data.
MAX_DATA_ELEMENTS = 1 << 22
# Strings the classification extension writes per request ("score:index:label", each a
# Python string and a formatting step on the event loop).
MAX_CLASSIFICATION_STRINGS = 65_536
MAX_TIMEOUT_US = 86_400 * 1_000_000
MAX_ELEMENT_BYTES = 64  # JSON bytes one number may take, whitespace and nesting included
_LENGTH = struct.Struct("<I")


class Tensor(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct, forbid_unknown_fields=True):
    inputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestedOutput] | None = None
    # Not in the protocol's request, but KServe's client sends both in every body: they
    # must agree with the URL (checked by the endpoint, which knows the path).
    model_name: str | None = None
    model_version: str | None = None


# What the HTTP body is first decoded into: InferRequest's fields, except that each
# input's `data` stays undecoded (msgspec.Raw) until its declared shape passed every limit,
# and parameters hold only what the protocol allows there (strings, numbers, booleans).
# A generic decode of `data` cost seconds of event loop for 16 MiB of `[[],[],...]`; a
# typed decode after the shape check fails at the first wrong element.
_Scalar = str | int | float | bool | None
MAX_PARAMETERS = 64
_Parameters = Annotated[dict[str, _Scalar], msgspec.Meta(max_length=MAX_PARAMETERS)]
MAX_RANK = 32
MAX_INPUTS = 1024


def _wire(name: str, base: type[msgspec.Struct], replace: dict[str, Any]) -> Any:
    """`base`'s fields, a few of them retyped: kept in step with the public struct."""
    fields: list[Any] = []
    for f in msgspec.structs.fields(base):
        kind = replace.get(f.name, f.type)
        if f.required:
            fields.append((f.name, kind))
        else:
            fields.append((f.name, kind, f.default if f.default is not msgspec.NODEFAULT else None))
    return msgspec.defstruct(name, fields, forbid_unknown_fields=True)


_WireTensor = _wire(
    "_WireTensor", Tensor,
    {"data": msgspec.Raw, "parameters": _Parameters | None,
     "shape": Annotated[list[int], msgspec.Meta(max_length=MAX_RANK)]},
)  # fmt: skip
_WireOutput = _wire("_WireOutput", RequestedOutput, {"parameters": _Parameters | None})
_WireRequest = _wire(
    "_WireRequest", InferRequest,
    {"inputs": Annotated[list[_WireTensor], msgspec.Meta(max_length=MAX_INPUTS)],  # type: ignore[valid-type]
     "outputs": Annotated[list[_WireOutput], msgspec.Meta(max_length=MAX_INPUTS)] | None,  # type: ignore[valid-type]
     "parameters": _Parameters | None},
)  # fmt: skip
_json_request = msgspec.json.Decoder(_WireRequest)
_msgpack_request = msgspec.msgpack.Decoder(_WireRequest)


class _ParsedRequest(InferRequest):
    """An InferRequest read from an HTTP body: each input's data still undecoded."""

    raw_data: list[msgspec.Raw | None] = []
    msgpack: bool = False


def _from_wire(wire: Any, msgpack: bool) -> _ParsedRequest:
    raws: list[msgspec.Raw | None] = []
    inputs = []
    for t in wire.inputs:
        data = t.data
        # `null` (JSON, maybe spaced) or nil (msgpack): no data. Anything longer is data.
        empty = data is None or (len(data) <= 16 and bytes(data).strip() in (b"null", b"\xc0"))
        raw = None if empty else data
        raws.append(raw)
        inputs.append(Tensor(name=t.name, shape=t.shape, datatype=t.datatype, parameters=t.parameters))
    outputs = (
        [RequestedOutput(name=o.name, parameters=o.parameters) for o in wire.outputs]
        if wire.outputs is not None
        else None
    )
    return _ParsedRequest(
        inputs=inputs, outputs=outputs, raw_data=raws, msgpack=msgpack, id=wire.id,
        parameters=wire.parameters, model_name=wire.model_name, model_version=wire.model_version,
    )  # fmt: skip


class DecodedInfer(NamedTuple):
    """A request's feeds and rows (a tuple: this is made on every request)."""

    feeds: Arrays
    rows: int


def parse_request(
    body: bytes, header_length: str | None, msgpack: bool = False
) -> tuple[InferRequest, bytes]:
    """The JSON (or msgpack) header and the binary tail that follows it, if any."""
    tail = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"{BINARY_HEADER} must be an integer") from None
        if not 0 <= n <= len(body):
            raise BadRequest(f"{BINARY_HEADER} {_clip(n)} is outside the body's {len(body)} bytes")
        body, tail = body[:n], body[n:]
    try:
        request = _from_wire((_msgpack_request if msgpack else _json_request).decode(body), msgpack)
    except msgspec.ValidationError as exc:
        raise Unprocessable("invalid inference request", validation_detail(str(exc))) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed body: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed body: nested too deeply") from None
    return request, tail


def raw_binary_request(manifest: Manifest, body: bytes) -> tuple[InferRequest, bytes]:
    """Triton's raw binary request (Inference-Header-Content-Length: 0): no JSON header, the
    body is the model's single input, its shape the signature's with the batch dimension
    read from the byte length."""
    if len(manifest.inputs) != 1:
        raise BadRequest(
            f"a raw binary request ({BINARY_HEADER}: 0) is for a model of one input; "
            f"{manifest.name!r} has {len(manifest.inputs)}: send a JSON header"
        )
    spec = manifest.inputs[0]
    rest = spec.shape[1:]
    if spec.datatype == "BYTES" or any(d < 0 for d in rest):
        raise BadRequest(
            f"a raw binary request needs an input of fixed size per row; {spec.name!r} is "
            f"{spec.datatype} {spec.shape}: send a JSON header"
        )
    row = NUMPY_DTYPES[spec.datatype].itemsize * math.prod(rest)
    if not spec.shape or spec.shape[0] >= 0:
        shape = list(spec.shape)
    elif row and len(body) % row == 0:
        shape = [len(body) // row, *rest]
    else:
        raise BadRequest(
            f"a raw binary body of {len(body)} bytes is not whole rows of {spec.datatype} {rest} "
            f"({row} bytes each)"
        )
    tensor = Tensor(spec.name, shape, spec.datatype, {"binary_data_size": len(body)})
    return InferRequest(inputs=[tensor]), body


def _clip(value: object) -> str:
    """A client's value, short enough to quote back in an error (never the whole of it)."""
    if isinstance(value, int) and value.bit_length() > 64:  # Python will not print 4,300+ digits
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, list) and any(isinstance(v, int) and v.bit_length() > 64 for v in value):
        return "[" + ", ".join(_clip(v) for v in value[:8]) + ("]" if len(value) <= 8 else ", ...]")
    text = value if isinstance(value, str) else repr(value)
    return clip(text)


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
    return math.prod(shape)


def _plan(tensor: Tensor, spec: TensorSpec, index: int, offset: int, tail: bytes, max_rows: int,
          max_bytes_elements: int, raw: msgspec.Raw | None, msgpack: bool) -> _Plan:  # fmt: skip
    loc: list[Any] = ["body", "inputs", index]
    count = _check_shape(tensor, spec, loc, max_rows)
    size = (tensor.parameters or {}).get("binary_data_size")
    has_data = tensor.data is not None or raw is not None
    if size is None:
        if not has_data:
            raise Unprocessable("input has no data", [{"loc": [*loc, "data"], "msg": "missing"}])
        if spec.datatype == "BYTES" and count > max_bytes_elements:
            raise TooLarge(f"{_clip(count)} BYTES elements in one input; the limit is {max_bytes_elements}")
        if raw is not None and spec.datatype != "BYTES":
            _check_raw_data(bytes(raw), tensor.shape, count, msgpack, [*loc, "data"])
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


def _check_raw_data(raw: bytes, shape: list[int], count: int, msgpack: bool, loc: list[Any]) -> None:
    """Refuse `data` whose bytes cannot be `shape`'s numbers, before a value is decoded.

    Every number takes at least a byte, and at most MAX_ELEMENT_BYTES as JSON. A JSON
    array of `count` numbers, flat or nested as the shape, holds exactly count - 1 commas
    and one `[` per list of the shape: beyond those, the data holds more values (or empty
    lists) than the shape, and each would be a Python object. msgpack states each array's
    length in its header, which the shape-bounded decoder checks before reading on."""
    size = len(raw)
    if size > count * MAX_ELEMENT_BYTES + 4096 or count > size:
        raise Unprocessable(
            f"data is {'larger' if size > count else 'smaller'} than its shape",
            [{"loc": loc, "msg": f"{size} bytes for {_clip(count)} elements"}],
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
            [{"loc": loc, "msg": f"more values or lists than shape {_clip(shape)} holds"}],
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


def _json_array(plan: _Plan) -> tuple[np.ndarray, bool]:
    """The data as an array, and whether it is known finite without looking again."""
    tensor, spec, loc = plan.tensor, plan.spec, plan.loc
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
    # BF16 arrives as floats and becomes bit patterns once checked (_tensor_array).
    dtype = np.dtype(np.float32) if spec.datatype == "BF16" else NUMPY_DTYPES[spec.datatype]
    # JSON spells no NaN or infinity (msgspec refuses them and 1e400): flat JSON floats
    # are finite, and within a narrow float's range they stay so. Checked here on the
    # Python floats, not on the array: the common request skips two array passes.
    finite = dtype.kind == "f" and plan.raw is not None and not plan.msgpack and not nested
    if finite and values and dtype.itemsize < 8:
        limit = _FLOAT_LIMITS[spec.datatype if spec.datatype != "BF16" else "FP32"]
        finite = -limit <= min(values) and max(values) <= limit
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
    # NaN is a missing value where the model fills it in (the records API's null); infinity,
    # and NaN anywhere else, never.
    refused = array.dtype.kind == "f" and not finite and not all_finite(array)
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
    raws = request.raw_data if isinstance(request, _ParsedRequest) else [None] * len(request.inputs)
    msgpack = parsed and request.msgpack  # type: ignore[attr-defined]
    for index, tensor in enumerate(request.inputs):
        plan = _plan(tensor, specs[tensor.name], index, offset, tail, max_rows, max_bytes_elements,
                     raws[index], msgpack)  # fmt: skip
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
            if out.name in seen:  # each copy would be encoded again: one answer, many times
                raise BadRequest(
                    f"output {out.name!r} is requested more than once",
                    [{"loc": ["body", "outputs", i, "name"], "msg": "repeated output"}],
                )
            seen.add(out.name)
    feeds: Arrays = {p.tensor.name: _tensor_array(p, tail, manifest) for p in plans}
    return DecodedInfer(feeds, rows)


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


def _wants_binary(request: InferRequest, name: str) -> bool:
    default = bool((request.parameters or {}).get("binary_data_output", False))
    for out in request.outputs or []:
        if out.name == name and out.parameters and "binary_data" in out.parameters:
            return bool(out.parameters["binary_data"])
    return default


def tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    """A tensor in the binary tensor extension's layout (BYTES: 4-byte length, then the bytes)."""
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1):
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_data(array: np.ndarray) -> Any:
    flat = array.reshape(-1)
    kind = flat.dtype.kind  # a kind's letter, not a dtype comparison: this runs per output
    if kind == "O":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    if kind == "f" and flat.dtype.itemsize == 2:
        return flat.astype(np.float32)
    return flat  # orjson writes numpy arrays natively


def class_counts(manifest: Manifest, request: InferRequest, rows: int = 1) -> dict[str, int]:
    """The classification extension: `classification: k` on a requested output (Triton's
    name on the wire; `class_count`, its name in Triton's clients, too), checked before
    inference so that a bad k, or too many strings to write, costs no model time."""
    counts: dict[str, int] = {}
    datatypes = {o.name: o.datatype for o in manifest.outputs}
    widths = {o.name: math.prod(o.shape[1:]) if all(d >= 0 for d in o.shape[1:]) else None
              for o in manifest.outputs}  # fmt: skip
    for i, out in enumerate(request.outputs or []):
        parameters = out.parameters or {}
        key = "classification" if "classification" in parameters else "class_count"
        k = parameters.get(key)
        if k is None:
            continue
        loc = ["body", "outputs", i, "parameters", key]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise Unprocessable(f"{key} must be a positive integer", [{"loc": loc, "msg": f"got {k!r}"}])
        if datatypes.get(out.name) in (None, "BYTES"):
            raise Unprocessable(
                f"output {out.name!r} holds no scores to classify", [{"loc": loc, "msg": "not numeric"}]
            )
        width = widths.get(out.name)  # None: known after inference, checked in _classify
        if width is not None:
            _check_strings(rows, min(k, width))
        counts[out.name] = k
    return counts


def _check_strings(rows: int, k: int) -> None:
    if rows * k > MAX_CLASSIFICATION_STRINGS:
        raise TooLarge(
            f"classification of the top {k} on {rows} rows writes {rows * k} strings; "
            f"the limit is {MAX_CLASSIFICATION_STRINGS}"
        )


def _classify(array: np.ndarray, k: int, labels: list[bool | int | str] | None) -> np.ndarray:
    """Each row's top k as Triton writes them: "score:index:label", or "score:index"
    when the output's width is not its label list's."""
    scores = array.reshape(array.shape[0] if array.ndim else 1, -1)
    k = min(k, scores.shape[1])
    _check_strings(scores.shape[0], k)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(scores, top, axis=1)
    labels = labels if labels is not None and len(labels) == scores.shape[1] else None
    indices = top.ravel().tolist()
    texts = [f"{v:f}:{i}" for v, i in zip(values.astype(np.float64).ravel().tolist(), indices, strict=True)]
    if labels is not None:
        texts = [f"{t}:{labels[i]}" for t, i in zip(texts, indices, strict=True)]
    out = np.empty(top.size, dtype=object)
    out[:] = texts
    return out.reshape(top.shape)


def output_labels(manifest: Manifest, name: str) -> list[bool | int | str] | None:
    """An output's labels: those given for it at convert (`--labels OUTPUT=file`, Triton's
    label_filename), else the converted classifier's classes."""
    given = manifest.labels.get(name)
    return list(given) if given is not None else manifest.classes


class OutputTensor(NamedTuple):
    """One output as the answer carries it, whatever the transport."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool  # HTTP: in the binary part (gRPC always answers raw bytes)


def infer_outputs(manifest: Manifest, request: InferRequest, outputs: Arrays) -> list[OutputTensor]:
    """The outputs the request asked for (all, by default), classified where it asked."""
    if not request.outputs:  # every output, as the model declares it
        binary = bool((request.parameters or {}).get("binary_data_output", False))
        return [OutputTensor(o.name, o.datatype, outputs[o.name], binary) for o in manifest.outputs]
    datatypes = {o.name: o.datatype for o in manifest.outputs}
    counts = class_counts(manifest, request)
    tensors: list[OutputTensor] = []
    for name in (o.name for o in request.outputs):
        array, datatype = outputs[name], datatypes[name]
        if name in counts:
            scores = from_bf16(array) if datatype == "BF16" else array
            array, datatype = _classify(scores, counts[name], output_labels(manifest, name)), "BYTES"
        tensors.append(OutputTensor(name, datatype, array, _wants_binary(request, name)))
    return tensors


_JSON_HEADERS = [(b"content-type", b"application/json")]


@functools.lru_cache(maxsize=256)
def _answer_head(name: str, version: str) -> bytes:
    """`{"model_name":...,"model_version":...,` once per model version, not per answer."""
    return orjson.dumps({"model_name": name, "model_version": version})[:-1] + b","


def encode_infer(
    manifest: Manifest, request: InferRequest, tensors: list[OutputTensor]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The HTTP response body and its headers (the binary extension's when it is used)."""
    entries: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for t in tensors:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.array.shape}
        if t.binary:
            raw = tensor_bytes(t.array, t.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = _json_data(from_bf16(t.array) if t.datatype == "BF16" else t.array)
        entries.append(entry)
    tail: dict[str, Any] = {"outputs": entries}
    if request.id is not None:
        tail = {"id": request.id, "outputs": entries}
    header = (
        _answer_head(manifest.name, manifest.version)
        + orjson.dumps(tail, option=orjson.OPT_SERIALIZE_NUMPY)[1:]
    )
    if not binary:
        return header, _JSON_HEADERS
    return header + b"".join(binary), [
        (b"content-type", b"application/octet-stream"),
        (BINARY_HEADER.encode(), str(len(header)).encode()),
    ]


def model_metadata(manifest: Manifest, versions: list[str], provider: str) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in manifest.inputs],
        "outputs": [{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in manifest.outputs],
        "parameters": {"provider": provider, "version": manifest.version, "task": manifest.task},
    }
