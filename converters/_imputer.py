"""Our converter for scikit-learn's SimpleImputer, registered with skl2onnx.

skl2onnx 1.20's own refuses a string imputer whose missing value is `np.nan` (the default
in every churn-style pipeline), and emits `ai.onnx.ml.Imputer`, which ONNX Runtime has no
float64 kernel for. This one uses standard operators only (IsNaN/Equal, Where, Gather), in
the input's own type. A string the records API receives as null arrives as "" (see
`gateway.records.codec`), so "" is what a string imputer treats as missing when scikit-learn's
missing value is NaN or None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto
from skl2onnx import update_registered_converter
from skl2onnx.common.data_types import (
    DoubleTensorType,
    FloatTensorType,
    Int64TensorType,
    StringTensorType,
)
from skl2onnx.operator_converters.common import concatenate_variables
from sklearn.impute import SimpleImputer

from converters.errors import ConversionError

# What a null string becomes on its way into the graph.
MISSING_STRING = ""

_NUMPY_OF: dict[type, Any] = {
    FloatTensorType: np.float32,
    DoubleTensorType: np.float64,
    Int64TensorType: np.int64,
}
_PROTO_OF: dict[Any, int] = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE,
                             np.int64: TensorProto.INT64}  # fmt: skip


def _is_nan_marker(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _kept(imputer: Any) -> np.ndarray:
    """Columns that leave the imputer: scikit-learn drops those all-missing in training."""
    stats = imputer.statistics_
    if getattr(imputer, "keep_empty_features", False):
        return np.arange(stats.shape[0])
    empty = np.array([_is_nan_marker(s) for s in stats], dtype=bool)
    return np.flatnonzero(~empty)


def _shape(operator: Any) -> None:
    imputer = operator.raw_operator
    input_type = type(operator.inputs[0].type)
    if any(not isinstance(v.type, input_type) for v in operator.inputs):
        raise ConversionError("SimpleImputer: its input columns mix types; impute strings and numbers apart")
    operator.outputs[0].type = input_type([None, int(_kept(imputer).size)])


def _add_const(scope: Any, container: Any, name: str, proto: int, values: np.ndarray) -> str:
    const: str = scope.get_unique_variable_name(name)
    container.add_initializer(const, proto, list(values.shape), values.ravel().tolist())
    return const


def _convert(scope: Any, operator: Any, container: Any) -> None:
    imputer = operator.raw_operator
    if getattr(imputer, "add_indicator", False):
        raise ConversionError("SimpleImputer(add_indicator=True) is not supported; drop add_indicator")
    x = concatenate_variables(scope, operator.inputs, container)
    kept = _kept(imputer)
    stats = imputer.statistics_[kept]
    missing = imputer.missing_values
    node = scope.get_unique_operator_name
    is_string = isinstance(operator.inputs[0].type, StringTensorType)
    if len(kept) != imputer.statistics_.shape[0]:
        index = _add_const(scope, container, "kept", TensorProto.INT64, kept.astype(np.int64))
        gathered = scope.get_unique_variable_name("kept_columns")
        container.add_node("Gather", [x, index], [gathered], axis=1, name=node("Gather"))
        x = gathered
    mask = scope.get_unique_variable_name("missing")
    if is_string:
        marker = MISSING_STRING if _is_nan_marker(missing) else str(missing)
        # Equal reads strings only from opset 19; LabelEncoder does it in ai.onnx.ml 2.
        flag = scope.get_unique_variable_name("missing_flag")
        container.add_node(
            "LabelEncoder", [x], [flag], keys_strings=[marker], values_int64s=[1], default_int64=0,
            op_domain="ai.onnx.ml", op_version=2, name=node("LabelEncoder"),
        )  # fmt: skip
        container.add_node("Cast", [flag], [mask], to=TensorProto.BOOL, name=node("Cast"))
        fill = _add_const(scope, container, "fill", TensorProto.STRING,
                          np.array([[str(s) for s in stats]], dtype=object))  # fmt: skip
    else:
        dtype = _NUMPY_OF.get(type(operator.inputs[0].type))
        if dtype is None:
            raise ConversionError(f"SimpleImputer: unsupported input type {operator.inputs[0].type}")
        if _is_nan_marker(missing):
            if dtype is np.int64:
                raise ConversionError("SimpleImputer: an integer input cannot hold NaN")
            container.add_node("IsNaN", [x], [mask], name=node("IsNaN"))
        else:
            marker_name = _add_const(
                scope, container, "marker", _PROTO_OF[dtype], np.array([missing], dtype=dtype)
            )
            container.add_node("Equal", [x, marker_name], [mask], name=node("Equal"))
        fill = _add_const(scope, container, "fill", _PROTO_OF[dtype], np.asarray([stats], dtype=dtype))
    container.add_node("Where", [mask, fill, x], [operator.outputs[0].full_name], name=node("Where"))


def register() -> None:
    update_registered_converter(SimpleImputer, "SklearnSimpleImputer", _shape, _convert, overwrite=True)
