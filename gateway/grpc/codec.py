"""V2 gRPC messages to and from the values the inference core works with.

A `ModelInferRequest` becomes the same `protocol_v2.InferRequest` the HTTP endpoint
decodes, with `raw_input_contents` as the binary tail that the binary tensor extension
carries (each input's `binary_data_size` says how much is its): one validation path, the
same checks and the same error messages for both protocols. Outputs always go back as
`raw_output_contents`, as Triton answers, which every V2 gRPC client reads.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from gateway.artifacts.manifest import Manifest
from gateway.errors import BadRequest, TooLarge, Unprocessable, validation_detail
from gateway.proto import grpc_service_pb2 as pb
from gateway.types import Arrays
from gateway.v2 import protocol as protocol_v2

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
    if len(tensor.shape) > protocol_v2.MAX_RANK:  # before the product of a million dimensions
        raise Unprocessable(
            f"input {tensor.name!r} has {len(tensor.shape)} dimensions; the limit is {protocol_v2.MAX_RANK}",
            [{"loc": ["body", "inputs", index, "shape"], "msg": "too many dimensions"}],
        )
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
    limit = protocol_v2.MAX_BYTES_ELEMENTS if field == "bytes_contents" else budget
    if len(values) > limit:
        raise TooLarge(
            f"input {tensor.name!r}: {len(values)} values in contents; the limit is {limit}: "
            "send larger tensors in raw_input_contents"
        )
    if field == "bytes_contents":
        return [v.decode("utf-8", errors="replace") for v in values]
    return list(values)


def infer_request(message: Any) -> tuple[protocol_v2.InferRequest, bytes]:
    """The request and its binary tail, as the HTTP binary extension would have sent them."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
            "give one per input, in the order of inputs"
        )
    inputs = []
    budget = protocol_v2.MAX_DATA_ELEMENTS
    for index, tensor in enumerate(message.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype,
        }  # fmt: skip
        params = parameters(tensor.parameters)
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(
                    f"input {tensor.name!r} has contents, but raw_input_contents is given: use one"
                )
            params["binary_data_size"] = len(raw[index])
        else:
            entry["data"] = data = _typed_data(tensor, index, budget)
            if data is not None and tensor.datatype != "BYTES":
                budget -= len(data)
        if params:
            entry["parameters"] = params
        inputs.append(entry)
    body: dict[str, Any] = {"inputs": inputs}
    if message.id:
        body["id"] = message.id
    if message.parameters:
        body["parameters"] = parameters(message.parameters)
    if message.outputs:
        body["outputs"] = [
            {"name": o.name, **({"parameters": parameters(o.parameters)} if o.parameters else {})}
            for o in message.outputs
        ]
    try:
        request = msgspec.convert(body, protocol_v2.InferRequest)
    except msgspec.ValidationError as exc:
        raise Unprocessable("invalid inference request", validation_detail(str(exc))) from None
    return request, b"".join(raw)


def infer_response(manifest: Manifest, request: protocol_v2.InferRequest, outputs: Arrays) -> Any:
    """A ModelInferResponse with every wanted output in raw_output_contents."""
    wanted = [o.name for o in request.outputs] if request.outputs else [o.name for o in manifest.outputs]
    datatypes = {o.name: o.datatype for o in manifest.outputs}
    response = pb.ModelInferResponse(
        model_name=manifest.name, model_version=manifest.version, id=request.id or ""
    )
    for name in wanted:
        array = outputs[name]
        response.outputs.add(name=name, datatype=datatypes[name], shape=array.shape)
        # The binary extension's little-endian layout is the gRPC raw layout.
        response.raw_output_contents.append(protocol_v2.tensor_bytes(array, datatypes[name]))
    return response


def model_metadata(metadata: dict[str, Any]) -> Any:
    """The HTTP metadata document (protocol_v2.model_metadata) as its gRPC message."""
    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata["versions"],
        platform=metadata["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
    )
