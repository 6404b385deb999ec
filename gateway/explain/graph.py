"""Expose a value inside an ONNX graph as an extra output, without the `onnx` package
(it is a build-time dependency; the serving set has only ONNX Runtime).

A serialized ModelProto is a sequence of fields, and protobuf merges a repeated embedded
message field: appending `graph { output { name: "x" } }` to the bytes adds one graph
output to the parsed model. ONNX Runtime infers the new output's type.
"""

from __future__ import annotations

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_OUTPUT = 12  # GraphProto.output
_VALUE_INFO_NAME = 1  # ValueInfoProto.name


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def with_outputs(model: bytes, names: list[str]) -> bytes:
    """`model` with each graph value in `names` added as a graph output."""
    outputs = b"".join(_field(_GRAPH_OUTPUT, _field(_VALUE_INFO_NAME, n.encode())) for n in names)
    return model + _field(_MODEL_GRAPH, outputs)
