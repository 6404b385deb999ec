"""Our converter for scikit-learn's QuantileTransformer, registered with skl2onnx (whose own
refuses output_distribution="normal"), for both output distributions.

Each column is interpolated piecewise-linearly between its `quantiles_` and `references_`
as scikit-learn does: forwards and backwards (over the reversed, negated knots) and averaged,
so repeated quantiles map to the middle of their references; values beyond the bounds get
0 or 1; NaN passes through. ONNX has no search, so the interval of x is the count of knots
at or below it. For "normal", ONNX has no inverse normal CDF either: it is scipy's own (Cephes' ndtri)
rebuilt from its rational approximations in the same order of operations, since a tree
after the transform may split exactly on a transformed training value, where any other
approximation's last bits would send rows down the other branch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto
from skl2onnx import update_registered_converter
from skl2onnx.common.data_types import DoubleTensorType, StringTensorType, guess_proto_type
from skl2onnx.operator_converters.common import concatenate_variables
from sklearn.preprocessing import QuantileTransformer

from converters.errors import ConversionError

# scikit-learn's sklearn.preprocessing._data.BOUNDS_THRESHOLD.
BOUNDS_THRESHOLD = 1e-7

# Cephes' ndtri (scipy.special.ndtri, which scipy.stats.norm.ppf calls): the central region's
# rational function of w = p - 0.5, then the tails' of 1/sqrt(-2 log p) for 2 <= z < 8, all
# p from 1e-7 reaches. Highest power first; the Q's leading 1 is implicit (p1evl).
_P0 = (-5.99633501014107895267e1, 9.80010754185999661536e1, -5.66762857469070293439e1,
       1.39312609387279679503e1, -1.23916583867381258016e0)  # fmt: skip
_Q0 = (1.95448858338141759834e0, 4.67627912898881538453e0, 8.63602421390890590575e1,
       -2.25462687854119370527e2, 2.00260212380060660359e2, -8.20372256168333339912e1,
       1.59056225126211695515e1, -1.18331621121330003142e0)  # fmt: skip
_P1 = (4.05544892305962419923e0, 3.15251094599893866154e1, 5.71628192246421288162e1,
       4.40805073893200834700e1, 1.46849561928858024014e1, 2.18663306850790267539e0,
       -1.40256079171354495875e-1, -3.50424626827848203418e-2, -8.57456785154685413611e-4)  # fmt: skip
_Q1 = (1.57799883256466749731e1, 4.53907635128879210584e1, 4.13172038254672030440e1,
       1.50425385692907503408e1, 2.50464946208309415979e0, -1.42182922854787788574e-1,
       -3.80806407691578277194e-2, -9.33259480895457427372e-4)  # fmt: skip
_EXP_MINUS_2 = 0.13533528323661269189
_SQRT_2PI = 2.50662827463100050242e0


class _Graph:
    """Nodes added to skl2onnx's container, constants in the input's own float type."""

    def __init__(self, scope: Any, container: Any, input_type: Any) -> None:
        self.scope, self.container = scope, container
        self.dtype = np.float64 if isinstance(input_type, DoubleTensorType) else np.float32
        self.proto = guess_proto_type(input_type)

    def const(self, values: Any, proto: int | None = None) -> str:
        array = np.asarray(values, dtype=np.int64 if proto == TensorProto.INT64 else self.dtype)
        name: str = self.scope.get_unique_variable_name("q_const")
        self.container.add_initializer(name, proto or self.proto, list(array.shape), array.ravel().tolist())
        return name

    def op(self, kind: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        target = out or self.scope.get_unique_variable_name(kind.lower())
        self.container.add_node(
            kind, list(inputs), [target], name=self.scope.get_unique_operator_name(kind), **attrs
        )
        return target

    def polynomial(self, x: str, coefficients: tuple[float, ...], monic: bool = False) -> str:
        """Cephes' polevl (or p1evl where `monic`), in its order of operations."""
        acc = self.op("Add", x, self.const(coefficients[0])) if monic else self.const(coefficients[0])
        for c in coefficients[1:]:
            acc = self.op("Add", self.op("Mul", acc, x), self.const(c))
        return acc


def _interp(g: _Graph, x: str, knots: np.ndarray, refs: np.ndarray) -> str:
    """np.interp(x[:, c], knots[:, c], refs[:, c]) for every column c at once."""
    k, columns = knots.shape
    # The count of knots at or below x is the first knot above it (they are sorted), or all
    # of them; found by ArgMax over bytes, not a sum over a rows x columns x knots int64.
    above = g.op("Greater", g.const(knots.T), g.op("Unsqueeze", x, g.const([2], TensorProto.INT64)))
    first_above = g.op("ArgMax", g.op("Cast", above, to=TensorProto.UINT8), axis=2, keepdims=0)
    every = g.op("GreaterOrEqual", x, g.const(knots[-1]))
    count = g.op("Where", every, g.const(k, TensorProto.INT64), first_above)
    below = g.op("Max", g.op("Sub", count, g.const(1, TensorProto.INT64)), g.const(0, TensorProto.INT64))
    j = g.op("Min", below, g.const(k - 2, TensorProto.INT64))
    index = g.op("Add", j, g.const(np.arange(columns) * k, TensorProto.INT64))
    after = g.op("Add", index, g.const(1, TensorProto.INT64))
    flat_x, flat_y = g.const(knots.T.ravel()), g.const(refs.T.ravel())
    x0, x1 = g.op("Gather", flat_x, index, axis=0), g.op("Gather", flat_x, after, axis=0)
    y0, y1 = g.op("Gather", flat_y, index, axis=0), g.op("Gather", flat_y, after, axis=0)
    # numpy's own order of operations: slope * (x - xp[j]) + fp[j].
    slope = g.op("Div", g.op("Sub", y1, y0), g.op("Sub", x1, x0))
    inside = g.op("Add", g.op("Mul", slope, g.op("Sub", x, x0)), y0)
    first, last = g.const(refs[0]), g.const(refs[-1])
    none = g.op("Equal", count, g.const(0, TensorProto.INT64))
    return g.op("Where", none, first, g.op("Where", every, last, inside))


def _inverse_normal_cdf(g: _Graph, p: str) -> str:
    """scipy.special.ndtri, step for step, on p clipped where scikit-learn clips its result."""
    low, high = BOUNDS_THRESHOLD - np.spacing(1), 1 - (BOUNDS_THRESHOLD - np.spacing(1))
    p = g.op("Clip", p, g.const(low), g.const(high))
    upper = g.op("Greater", p, g.const(1.0 - _EXP_MINUS_2))
    y = g.op("Where", upper, g.op("Sub", g.const(1.0), p), p)
    w = g.op("Sub", y, g.const(0.5))
    w2 = g.op("Mul", w, w)
    ratio = g.op("Div", g.op("Mul", w2, g.polynomial(w2, _P0)), g.polynomial(w2, _Q0, monic=True))
    central = g.op("Mul", g.op("Add", w, g.op("Mul", w, ratio)), g.const(_SQRT_2PI))
    x = g.op("Sqrt", g.op("Mul", g.const(-2.0), g.op("Log", y)))
    x0 = g.op("Sub", x, g.op("Div", g.op("Log", x), x))
    z = g.op("Div", g.const(1.0), x)
    x1 = g.op("Div", g.op("Mul", z, g.polynomial(z, _P1)), g.polynomial(z, _Q1, monic=True))
    tail = g.op("Sub", x0, x1)
    tail = g.op("Where", upper, tail, g.op("Neg", tail))
    value = g.op("Where", g.op("Greater", y, g.const(_EXP_MINUS_2)), central, tail)
    from scipy.stats import norm

    return g.op("Clip", value, g.const(norm.ppf(low)), g.const(norm.ppf(high)))


def _shape(operator: Any) -> None:
    model = operator.raw_operator
    if any(isinstance(v.type, StringTensorType) for v in operator.inputs):
        raise ConversionError("QuantileTransformer reads text; it needs numbers")
    if model.quantiles_.shape[0] < 2:
        raise ConversionError(
            f"QuantileTransformer(n_quantiles={model.n_quantiles}) needs at least 2 quantiles"
        )
    operator.outputs[0].type = type(operator.inputs[0].type)([None, int(model.quantiles_.shape[1])])


def _convert(scope: Any, operator: Any, container: Any) -> None:
    model = operator.raw_operator
    g = _Graph(scope, container, operator.inputs[0].type)
    x = concatenate_variables(scope, operator.inputs, container)
    knots, refs = np.asarray(model.quantiles_, np.float64), np.asarray(model.references_, np.float64)
    refs_2d = np.repeat(refs[:, None], knots.shape[1], axis=1)
    forward = _interp(g, x, knots, refs_2d)
    backward = _interp(g, g.op("Neg", x), -knots[::-1], -refs_2d[::-1])
    y = g.op("Mul", g.const(0.5), g.op("Sub", forward, backward))
    first, last = g.const(knots[0]), g.const(knots[-1])
    if model.output_distribution == "normal":
        below = g.op("Less", g.op("Sub", x, g.const(BOUNDS_THRESHOLD)), first)
        above = g.op("Greater", g.op("Add", x, g.const(BOUNDS_THRESHOLD)), last)
    else:
        below, above = g.op("Equal", x, first), g.op("Equal", x, last)
    # scikit-learn sets the upper bound, then the lower one: the lower wins where both hold.
    y = g.op("Where", below, g.const(0.0), g.op("Where", above, g.const(1.0), y))
    if model.output_distribution == "normal":
        y = _inverse_normal_cdf(g, y)
    g.op("Where", g.op("IsNaN", x), x, y, out=operator.outputs[0].full_name)


def register() -> None:
    update_registered_converter(
        QuantileTransformer, "SklearnQuantileTransformer", _shape, _convert, overwrite=True
    )
