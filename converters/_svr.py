"""Our converter for scikit-learn's SVR and NuSVR, registered with skl2onnx.

ONNX Runtime has no float64 kernel for `ai.onnx.ml.SVMRegressor`, so skl2onnx's graph
computes in float32 and misses libsvm's values by ~1e-6 relative. This one computes the
kernel expansion with standard operators in the input's own type, with libsvm's formula
(the RBF distance as x.x + s.s - 2 x.s).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skl2onnx import update_registered_converter
from skl2onnx.common.data_types import DoubleTensorType, guess_proto_type
from skl2onnx.shape_calculators.linear_regressor import calculate_linear_regressor_output_shapes
from sklearn.svm import SVR, NuSVR

from converters.errors import ConversionError


def _convert(scope: Any, operator: Any, container: Any) -> None:
    model = operator.raw_operator
    x = operator.inputs[0].full_name
    dtype = np.float64 if isinstance(operator.inputs[0].type, DoubleTensorType) else np.float32
    proto = guess_proto_type(operator.inputs[0].type)
    var, node = scope.get_unique_variable_name, scope.get_unique_operator_name

    def const(name: str, value: Any) -> str:
        array = np.asarray(value, dtype=dtype)
        tensor: str = var(name)
        container.add_initializer(tensor, proto, list(array.shape), array.ravel().tolist())
        return tensor

    def op(kind: str, inputs: list[str], **attrs: Any) -> str:
        out: str = var(kind.lower())
        container.add_node(kind, inputs, [out], name=node(kind), **attrs)
        return out

    support = np.asarray(model.support_vectors_, dtype=np.float64)
    gamma = float(getattr(model, "_gamma", 1.0))
    dots = op("MatMul", [x, const("support_t", support.T)])
    if model.kernel == "linear":
        kernel = dots
    elif model.kernel == "rbf":
        squares = op("ReduceSum", [op("Mul", [x, x]), const_int(scope, container, [1])], keepdims=1)
        distance = op("Add", [op("Sub", [squares, op("Mul", [dots, const("two", 2.0)])]),
                              const("support_sq", (support**2).sum(axis=1)[None, :])])  # fmt: skip
        kernel = op("Exp", [op("Mul", [distance, const("minus_gamma", -gamma)])])
    elif model.kernel in ("poly", "sigmoid"):
        scaled = op("Add", [op("Mul", [dots, const("gamma", gamma)]), const("coef0", float(model.coef0))])
        kernel = (
            op("Pow", [scaled, const("degree", float(model.degree))])
            if model.kernel == "poly"
            else op("Tanh", [scaled])
        )
    else:
        raise ConversionError(f"{type(model).__name__}(kernel={model.kernel!r}) is not supported")
    summed = op("MatMul", [kernel, const("dual_coef_t", np.asarray(model.dual_coef_, np.float64).T)])
    container.add_node(
        "Add", [summed, const("intercept", np.asarray(model.intercept_, np.float64))],
        [operator.outputs[0].full_name], name=node("Add"),
    )  # fmt: skip


def const_int(scope: Any, container: Any, values: list[int]) -> str:
    from onnx import TensorProto

    name: str = scope.get_unique_variable_name("axes")
    container.add_initializer(name, TensorProto.INT64, [len(values)], values)
    return name


def register() -> None:
    for model, alias in ((SVR, "SklearnSVR"), (NuSVR, "SklearnNuSVR")):
        update_registered_converter(
            model, alias, calculate_linear_regressor_output_shapes, _convert, overwrite=True
        )
