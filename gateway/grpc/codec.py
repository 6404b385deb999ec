"""V2 gRPC messages to and from the values the inference core works with.

A `ModelInferRequest` becomes the same `v2_messages.InferRequest` the HTTP endpoint
decodes, with `raw_input_contents` as the binary tail that the binary tensor extension
carries (each input's `binary_data_size` says how much is its): one validation path, the
same checks and the same error messages for both protocols. Outputs always go back as
`raw_output_contents`, as Triton answers, which every V2 gRPC client reads.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from gateway.errors import BadRequest, TooLarge, Unprocessable
from gateway.proto import grpc_service_pb2 as pb
from gateway.protowire import WireError, read_varint
from gateway.v2 import encode as v2_encode
from gateway.v2 import messages as v2_messages
from gateway.v2.service import InferAnswer

# Where the typed form of each datatype lives in InferTensorContents (FP16 has none).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}  # fmt: skip


def _probe_classes() -> tuple[Any, Any, Any]:
    """ModelInferRequest read shallowly: inputs, outputs and parameters as undecoded bytes
    and a tensor's shape as its packed bytes. Parsing one costs a copy per entry, not a
    Python object, a map entry (~24 µs each in the full parse) or a varint each, so every
    declared count is checked before the full message is built."""
    proto = descriptor_pb2.FileDescriptorProto(name="gateway_probe.proto", package="gateway_probe")
    kind = descriptor_pb2.FieldDescriptorProto
    one, many, raw = kind.LABEL_OPTIONAL, kind.LABEL_REPEATED, kind.TYPE_BYTES
    layouts = {
        "Request": [("id", 3, one), ("parameters", 4, many), ("inputs", 5, many), ("outputs", 6, many)],
        "Tensor": [("name", 1, one), ("datatype", 2, one), ("shape", 3, one), ("parameters", 4, many),
                   ("contents", 5, one)],
        "Output": [("name", 1, one), ("parameters", 2, many)],
    }  # fmt: skip
    for name, fields in layouts.items():
        message = proto.message_type.add(name=name)
        for field, number, label in fields:
            message.field.add(name=field, number=number, type=raw, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"gateway_probe.{n}")) for n in layouts
    )


_ProbeRequest, _ProbeTensor, _ProbeOutput = _probe_classes()
_FIELD_OVERHEAD = 11  # a tag and a length prefix, at most


def _too_many(loc: list[Any], count: int, limit: int, kind: str = "array") -> Unprocessable:
    """The words HTTP's typed decode uses for the same limit."""
    return Unprocessable(
        "invalid inference request",
        [{"loc": loc, "msg": f"Expected `{kind}` of length <= {limit}, got {count}"}],
    )


def request_id(raw: bytes) -> str:
    """The id of a request that failed, read shallowly (a full parse of what failed could
    cost seconds), clipped as HTTP clips it; empty when it cannot be read."""
    try:
        given: bytes = _ProbeRequest.FromString(raw).id
    except DecodeError:
        return ""
    return given[: v2_messages.ID_LIMIT].decode(errors="replace")


def check_sizes(raw: bytes) -> None:
    """Every count a ModelInferRequest declares, against the limits HTTP applies, before
    the message is parsed into Python-visible values."""
    try:
        probe = _ProbeRequest.FromString(raw)
    except DecodeError as exc:
        raise BadRequest(f"malformed ModelInferRequest: {exc}") from None
    for field, limit, kind in (("parameters", v2_messages.MAX_PARAMETERS, "object"),
                               ("inputs", v2_messages.MAX_INPUTS, "array"),
                               ("outputs", v2_messages.MAX_INPUTS, "array")):  # fmt: skip
        count = len(getattr(probe, field))
        if count > limit:
            raise _too_many(["body", field], count, limit, kind)
    for index, entry in enumerate(probe.inputs):
        _check_tensor(_ProbeTensor.FromString(entry), len(entry), index)
    for index, entry in enumerate(probe.outputs):
        count = len(_ProbeOutput.FromString(entry).parameters)
        if count > v2_messages.MAX_PARAMETERS:
            raise _too_many(
                ["body", "outputs", index, "parameters"], count, v2_messages.MAX_PARAMETERS, "object"
            )


def _check_tensor(tensor: Any, size: int, index: int) -> None:
    loc = ["body", "inputs", index]
    if len(tensor.parameters) > v2_messages.MAX_PARAMETERS:
        raise _too_many([*loc, "parameters"], len(tensor.parameters), v2_messages.MAX_PARAMETERS, "object")
    # A packed varint takes 1 to 10 bytes: beyond 10 per dimension, too many dimensions.
    if len(tensor.shape) > 10 * v2_messages.MAX_RANK:
        raise _too_many([*loc, "shape"], len(tensor.shape), v2_messages.MAX_RANK)
    count = _bytes_entries(tensor.contents, v2_messages.MAX_BYTES_ELEMENTS)
    if count > v2_messages.MAX_BYTES_ELEMENTS:
        name = tensor.name[:64].decode(errors="replace")
        raise TooLarge(
            f"input {name!r}: over {v2_messages.MAX_BYTES_ELEMENTS} values in contents; the limit is "
            f"{v2_messages.MAX_BYTES_ELEMENTS}: send larger tensors in raw_input_contents"
        )
    known = sum(len(getattr(tensor, f)) for f in ("name", "datatype", "shape", "contents"))
    known += sum(len(p) for p in tensor.parameters)
    if size > known + _FIELD_OVERHEAD * (4 + len(tensor.parameters)):
        # Fields read as unknown here: an unpacked shape, a field repeated. No client sends
        # them, and each would be parsed one by one.
        raise BadRequest(
            "malformed ModelInferRequest: an input carries unpacked or repeated fields",
            [{"loc": loc, "msg": "send shape packed, each field once"}],
        )


_BYTES_TAG = 0x42  # InferTensorContents.bytes_contents: field 8, length-delimited


def _bytes_entries(contents: bytes, limit: int) -> int:
    """How many bytes_contents entries `contents` holds, counted only up to limit + 1:
    each is a Python bytes in the full parse (4 M empty ones took 0.25 s), and protobuf's
    own parse of them costs as much. Other fields are skipped; a malformed message stops
    the count and is refused by the full parse."""
    if contents.count(_BYTES_TAG) <= limit:  # each entry starts with its tag byte
        return 0
    pos, count, end = 0, 0, len(contents)
    try:
        while pos < end and count <= limit:
            tag, pos = read_varint(contents, pos, end)
            wire = tag & 7
            if wire == 0:
                _, pos = read_varint(contents, pos, end)
            elif wire == 2:
                size, pos = read_varint(contents, pos, end)
                pos += size
                count += tag == _BYTES_TAG
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                break
    except (IndexError, WireError):  # malformed: the full parse refuses it
        pass
    return count


def parameters(entries: Any) -> dict[str, Any]:
    """A protobuf map<string, InferParameter> as plain values."""
    out: dict[str, Any] = {}
    for key, value in entries.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice is not None else None
    return out


def _typed_data(tensor: Any, index: int, budget: int) -> list[Any] | None:
    """The tensor's typed contents as a flat list, from the field its datatype names; at
    most `budget` numbers (what the request's limit leaves)."""
    if not tensor.HasField("contents"):
        return None
    if len(tensor.shape) > v2_messages.MAX_RANK:  # before the product of a million dimensions
        raise _too_many(["body", "inputs", index, "shape"], len(tensor.shape), v2_messages.MAX_RANK)
    contents = tensor.contents
    field = CONTENTS_FIELD.get(tensor.datatype)
    given = [f.name for f, _ in contents.ListFields()]
    if field is None or any(name != field for name in given):
        where = f"contents.{field}" if field else "raw_input_contents"
        raise Unprocessable(
            f"input {tensor.name!r}: {tensor.datatype} data belongs in {where}",
            [{"loc": ["body", "inputs", index, "contents"], "msg": f"found {given}"}],
        )
    values = getattr(contents, field)
    # Each value becomes a Python object: the count is checked first, against the shape it
    # must fill and the request limit, not after millions were made.
    declared = math.prod(tensor.shape)
    if len(values) != declared:
        raise Unprocessable(
            f"input {tensor.name!r}: contents hold {len(values)} values for shape {list(tensor.shape)[:8]}",
            [{"loc": ["body", "inputs", index, "contents", field], "msg": f"expected {declared} values"}],
        )
    limit = v2_messages.MAX_BYTES_ELEMENTS if field == "bytes_contents" else budget
    if len(values) > limit:
        raise TooLarge(
            f"input {tensor.name!r}: {len(values)} values in contents; the limit is {limit}: "
            "send larger tensors in raw_input_contents"
        )
    if field == "bytes_contents":
        return [v.decode("utf-8", errors="replace") for v in values]
    return list(values)


def infer_request(message: Any) -> tuple[v2_messages.InferRequest, bytes]:
    """The request and its binary tail, as the HTTP binary extension would have sent them.
    `check_sizes` has bounded every count this reads."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
            "give one per input, in the order of inputs"
        )
    inputs = []
    budget = v2_messages.MAX_DATA_ELEMENTS
    for index, tensor in enumerate(message.inputs):
        if len(tensor.shape) > v2_messages.MAX_RANK:
            raise _too_many(["body", "inputs", index, "shape"], len(tensor.shape), v2_messages.MAX_RANK)
        params = parameters(tensor.parameters)
        data = None
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(
                    f"input {tensor.name!r} has contents, but raw_input_contents is given: use one"
                )
            params["binary_data_size"] = len(raw[index])
        else:
            data = _typed_data(tensor, index, budget)
            if data is not None and tensor.datatype != "BYTES":
                budget -= len(data)
        inputs.append(
            v2_messages.Tensor(tensor.name, list(tensor.shape), tensor.datatype, params or None, data)
        )
    outputs = [
        v2_messages.RequestedOutput(o.name, parameters(o.parameters) if o.parameters else None)
        for o in message.outputs
    ]
    request = v2_messages.InferRequest(
        inputs=inputs,
        id=message.id or None,
        parameters=parameters(message.parameters) if message.parameters else None,
        outputs=outputs or None,
    )
    return request, b"".join(raw)


def infer_response(answer: InferAnswer) -> Any:
    """A ModelInferResponse with every output in raw_output_contents."""
    manifest = answer.model.manifest
    response = pb.ModelInferResponse(
        model_name=manifest.name, model_version=manifest.version, id=answer.request.id or ""
    )
    for tensor in answer.outputs:
        out = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
        for key, value in (tensor.parameters or {}).items():
            _set_parameter(out.parameters[key], value)
        # The binary extension's little-endian layout is the gRPC raw layout.
        response.raw_output_contents.append(v2_encode.tensor_bytes(tensor.array, tensor.datatype))
    return response


def _set_parameter(parameter: Any, value: bool | int | float | str) -> None:
    """An InferParameter from a plain value (bool before int: a bool is an int)."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def model_metadata(metadata: dict[str, Any]) -> Any:
    """The HTTP metadata document (v2_encode.model_metadata) as its gRPC message."""
    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata["versions"],
        platform=metadata["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
    )
