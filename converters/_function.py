"""Our converters for scikit-learn's FunctionTransformer and TransformedTargetRegressor,
registered with skl2onnx (whose FunctionTransformer takes func=None only).

The numpy functions ONNX has an operator for (log1p, log, expm1, exp, sqrt, abs; None is
the identity) become those operators in the input's own type; anything else is refused at
conversion, naming the function. A TransformedTargetRegressor is its regressor followed by
the inverse of its target transform: `inverse_func`, or a fitted StandardScaler's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from skl2onnx import update_registered_converter
from skl2onnx.common.data_types import DoubleTensorType, StringTensorType, guess_proto_type
from skl2onnx.shape_calculators.linear_regressor import calculate_linear_regressor_output_shapes
from sklearn.compose import TransformedTargetRegressor
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from converters.errors import ConversionError

# Each function as ONNX steps: (operator, constant operand or None).
STEPS: dict[Any, tuple[tuple[str, float | None], ...]] = {
    np.log1p: (("Add", 1.0), ("Log", None)),
    np.log: (("Log", None),),
    np.expm1: (("Exp", None), ("Sub", 1.0)),
    np.exp: (("Exp", None),),
    np.sqrt: (("Sqrt", None),),
    np.abs: (("Abs", None),),
}
SUPPORTED = "numpy's log1p, log, expm1, exp, sqrt or abs (or None)"


def _name(func: Any) -> str:
    return str(getattr(func, "__name__", None) or repr(func))


def check_function(owner: str, option: str, func: Any, kw_args: Any = None) -> None:
    if func is not None and func not in STEPS:
        raise ConversionError(
            f"{owner}({option}={_name(func)}) has no ONNX equivalent: use {SUPPORTED}, "
            "or apply the function to the data before the model"
        )
    if kw_args:
        raise ConversionError(f"{owner}({option}={_name(func)}, kw_args=...) is not supported: drop kw_args")


def _emitter(scope: Any, container: Any, input_type: Any) -> Callable[[str, Any, str | None], str]:
    """Adds `func` applied to a tensor; the result goes to `out`, or a new name."""
    dtype = np.float64 if isinstance(input_type, DoubleTensorType) else np.float32
    proto = guess_proto_type(input_type)

    def emit(x: str, func: Any, out: str | None) -> str:
        steps = STEPS.get(func, ()) if func is not None else ()
        if not steps:
            steps = (("Identity", None),)
        for i, (kind, operand) in enumerate(steps):
            inputs = [x]
            if operand is not None:
                const = scope.get_unique_variable_name("operand")
                container.add_initializer(const, proto, [], [dtype(operand).item()])
                inputs.append(const)
            target = (
                out if (i == len(steps) - 1 and out is not None) else scope.get_unique_variable_name(kind)
            )
            container.add_node(kind, inputs, [target], name=scope.get_unique_operator_name(kind))
            x = target
        return x

    return emit


def _function_shape(operator: Any) -> None:
    model = operator.raw_operator
    check_function("FunctionTransformer", "func", model.func, model.kw_args)
    if any(isinstance(v.type, StringTensorType) for v in operator.inputs) and model.func is not None:
        raise ConversionError(f"FunctionTransformer(func={_name(model.func)}) reads text; it needs numbers")
    width = sum(v.type.shape[1] for v in operator.inputs) if all(
        isinstance(v.type.shape[1], int) for v in operator.inputs
    ) else None  # fmt: skip
    operator.outputs[0].type = type(operator.inputs[0].type)([None, width])


def _function_convert(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.operator_converters.common import concatenate_variables

    x = concatenate_variables(scope, operator.inputs, container)
    emit = _emitter(scope, container, operator.inputs[0].type)
    emit(x, operator.raw_operator.func, operator.outputs[0].full_name)


def _target_shape(operator: Any) -> None:
    _inverse_of(operator.raw_operator)  # refuse early, naming the option
    calculate_linear_regressor_output_shapes(operator)


def _inverse_of(model: Any) -> Any:
    """The fitted target transform's inverse: a function, or the StandardScaler itself."""
    transformer = model.transformer_
    if isinstance(transformer, FunctionTransformer):
        check_function("TransformedTargetRegressor", "inverse_func", transformer.inverse_func,
                       transformer.inv_kw_args)  # fmt: skip
        return transformer.inverse_func
    if isinstance(transformer, StandardScaler):
        return transformer
    raise ConversionError(
        f"TransformedTargetRegressor(transformer={type(transformer).__name__}) is not supported: "
        f"use func/inverse_func from {SUPPORTED}, or transformer=StandardScaler()"
    )


def _target_convert(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.algebra.onnx_operator import OnnxSubEstimator

    model = operator.raw_operator
    opv = container.target_opset
    inner = OnnxSubEstimator(model.regressor_, *operator.inputs, op_version=opv)
    raw = scope.get_unique_variable_name("target_transformed")
    from skl2onnx.algebra.onnx_ops import OnnxIdentity

    OnnxIdentity(inner, op_version=opv, output_names=[raw]).add_to(scope, container)
    out = operator.outputs[0].full_name
    inverse = _inverse_of(model)
    if isinstance(inverse, StandardScaler):
        _unscale(scope, container, operator.inputs[0].type, raw, inverse, out)
    else:
        _emitter(scope, container, operator.inputs[0].type)(raw, inverse, out)


def _unscale(scope: Any, container: Any, input_type: Any, x: str, scaler: Any, out: str) -> None:
    dtype = np.float64 if isinstance(input_type, DoubleTensorType) else np.float32
    proto = guess_proto_type(input_type)
    scale = np.asarray(scaler.scale_ if scaler.scale_ is not None else [1.0], dtype=dtype)
    mean = np.asarray(scaler.mean_ if scaler.mean_ is not None else [0.0], dtype=dtype)
    names = []
    for label, values in (("scale", scale), ("mean", mean)):
        name = scope.get_unique_variable_name(label)
        container.add_initializer(name, proto, [1, values.size], values.ravel().tolist())
        names.append(name)
    scaled = scope.get_unique_variable_name("scaled")
    container.add_node("Mul", [x, names[0]], [scaled], name=scope.get_unique_operator_name("Mul"))
    container.add_node("Add", [scaled, names[1]], [out], name=scope.get_unique_operator_name("Add"))


def register() -> None:
    update_registered_converter(
        FunctionTransformer, "SklearnFunctionTransformer", _function_shape, _function_convert, overwrite=True
    )
    update_registered_converter(
        TransformedTargetRegressor, "SklearnTransformedTargetRegressor", _target_shape, _target_convert,
        overwrite=True,
    )  # fmt: skip
