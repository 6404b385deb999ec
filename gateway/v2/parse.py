"""V2 HTTP bodies read into an InferRequest: the JSON or msgpack header, with each input's
`data` left undecoded until its declared shape passed every limit, and the binary tail.
"""

from __future__ import annotations

import math
import struct
from typing import Annotated, Any

import msgspec

from gateway.artifacts.manifest import Manifest, V2DType
from gateway.artifacts.tabular import (
    NUMPY_DTYPES,
)
from gateway.errors import BadRequest, Unprocessable, clip, validation_detail
from gateway.v2.messages import (
    BINARY_HEADER,
    MAX_INPUTS,
    MAX_PARAMETERS,
    MAX_RANK,
    InferRequest,
    RequestedOutput,
    Tensor,
)

# What the HTTP body is first decoded into: InferRequest's fields, except that each
# input's `data` stays undecoded (msgspec.Raw) until its declared shape passed every limit,
# and parameters hold only what the protocol allows there (strings, numbers, booleans).
# A generic decode of `data` cost seconds of event loop for 16 MiB of `[[],[],...]`; a
# typed decode after the shape check fails at the first wrong element.
_Scalar = str | int | float | bool | None
_Parameters = Annotated[dict[str, _Scalar], msgspec.Meta(max_length=MAX_PARAMETERS)]


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

    raw_data: list[msgspec.Raw | None] = []  # noqa: RUF012 (a Struct field; ruff cannot see the base)
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
    body is the model's single input and the answer's outputs are binary, as Triton's are.
    The input's shape is Triton's: a batch of one where the model batches, then its own
    dimensions, one of which may be variable and is read from the byte length; a BYTES
    input holds one element, the whole body. One extension: where every dimension after
    the batch is fixed, the batch is as many rows as the body holds."""
    if len(manifest.inputs) != 1:
        raise BadRequest(
            f"Raw request must only have 1 input (found 1) to be deduced but got {len(manifest.inputs)} "
            f"inputs in {manifest.name!r} model configuration: send a JSON header ({BINARY_HEADER} > 0)"
        )
    spec = manifest.inputs[0]
    batch, dims = ([-1], spec.shape[1:]) if manifest.batched else ([], list(spec.shape))
    variable = [i for i, d in enumerate(dims) if d < 0]
    if spec.any_shape or len(variable) > 1:
        raise BadRequest(
            f"The shape of the raw input {spec.name!r} can not be deduced because there are more than "
            f"one variable-sized dimension ({spec.shape}): send a JSON header"
        )
    if spec.datatype == "BYTES":
        if variable or math.prod(dims) != 1:
            raise BadRequest(
                f"For BYTE datatype raw input {spec.name!r}, the model must have input shape [1] "
                f"(it has {spec.shape}): send a JSON header"
            )
        body = struct.pack("<I", len(body)) + body  # the one element, as the binary extension writes it
        shape = [1 for _ in batch] + dims
    else:
        shape = batch + dims if not variable else [1 for _ in batch] + dims
        _deduce(shape, shape.index(-1) if -1 in shape else None, spec.datatype, len(body))
    tensor = Tensor(spec.name, shape, spec.datatype, {"binary_data_size": len(body)})
    return InferRequest(inputs=[tensor], parameters={"binary_data_output": True}), body


def _deduce(shape: list[int], axis: int | None, datatype: V2DType, size: int) -> None:
    """Fill in the variable dimension from the body's byte length: it must be whole."""
    if axis is None:
        return
    step = NUMPY_DTYPES[datatype].itemsize * math.prod(d for d in shape if d >= 0)
    if not step or size % step:
        what = f"rows of {datatype} {shape[1:]}" if axis == 0 else f"{datatype} elements in {shape}"
        raise BadRequest(f"a raw binary body of {size} bytes is not whole {what} ({step} bytes each)")
    shape[axis] = size // step


def _clip(value: object) -> str:
    """A client's value, short enough to quote back in an error (never the whole of it)."""
    if isinstance(value, int) and value.bit_length() > 64:  # Python will not print 4,300+ digits
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, list) and any(isinstance(v, int) and v.bit_length() > 64 for v in value):
        return "[" + ", ".join(_clip(v) for v in value[:8]) + ("]" if len(value) <= 8 else ", ...]")
    text = value if isinstance(value, str) else repr(value)
    return clip(text)
