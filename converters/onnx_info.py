"""Read an ONNX graph's signature into the manifest's terms."""

from __future__ import annotations

from typing import Any

from gateway.artifacts.manifest import OnnxInfo, TensorSpec, V2DType
from gateway.artifacts.repository import sha256_bytes

# onnx.TensorProto element types to Open Inference Protocol datatypes.
_ELEM_TO_V2: dict[int, V2DType] = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
}


def _spec(value_info: Any) -> TensorSpec:
    if not value_info.type.HasField("tensor_type"):
        raise ValueError(
            f"graph value {value_info.name!r} is a {value_info.type.WhichOneof('value')}, not a tensor "
            "(maps and sequences are not served; convert classifiers without ZipMap)"
        )
    tensor = value_info.type.tensor_type
    if tensor.elem_type not in _ELEM_TO_V2:
        import onnx

        kind = onnx.TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "undefined"
        raise ValueError(
            f"graph value {value_info.name!r} holds {kind} elements, which the gateway does not "
            f"serve (it serves {', '.join(sorted(set(_ELEM_TO_V2.values())))}); cast it in the graph"
        )
    if not tensor.HasField("shape"):  # ONNX Runtime takes any rank here: so does the gateway
        return TensorSpec(
            name=value_info.name, datatype=_ELEM_TO_V2[tensor.elem_type], shape=[], any_shape=True
        )
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return TensorSpec(name=value_info.name, datatype=_ELEM_TO_V2[tensor.elem_type], shape=shape)


def signature(model: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [_spec(v) for v in model.graph.output]


def onnx_info(model: Any, data: bytes) -> OnnxInfo:
    return OnnxInfo(
        sha256=sha256_bytes(data),
        size=len(data),
        opset={(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        ir_version=int(model.ir_version),
    )
