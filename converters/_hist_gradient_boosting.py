"""Our converter for scikit-learn's HistGradientBoosting models, registered with skl2onnx.

skl2onnx 1.20 fails on these with scikit-learn 1.9 (`nodes_missing_value_tracks_true`
arrives as booleans) and, once forced through, its probabilities differ from
scikit-learn's by up to 0.14; with native categorical features (`from_dtype`, the default
since scikit-learn 1.6) its shape check refuses the string columns. This converter
reproduces scikit-learn's own preprocessor (categories to ordinal codes, unknown ones to
NaN), turns each categorical split into a numeric split on a column of its own (see
CategoricalSplits), and emits one TreeEnsembleRegressor that sums the raw scores with
double-precision thresholds and leaf values (as scikit-learn does), then applies the
loss's inverse link: sigmoid, softmax, exp or identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import TensorProto, numpy_helper
from skl2onnx import update_registered_converter
from skl2onnx.common.data_types import (
    DoubleTensorType,
    FloatTensorType,
    Int64TensorType,
    StringTensorType,
    guess_proto_type,
)
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from converters._trees import add_label
from converters.errors import ConversionError

ML_OPSET = 3


MISSING_ROW = 256  # category codes are below max_bins <= 255; this row answers "missing"


@dataclass
class CategoricalSplits:
    """Each categorical split as a column of its own: 0.0 where a row goes left, 1.0 where it
    goes right. The split then reads that column as `x <= 0.5`, a plain numeric split that
    ai.onnx.ml 3 has (set membership arrives only with TreeEnsemble in ai.onnx.ml 5)."""

    n_features: int
    # feature index -> one [257] table per split on it (rows: codes 0..255, then missing)
    tables: dict[int, list[np.ndarray]] = field(default_factory=dict)

    def add(self, feature: int, goes_right: np.ndarray) -> int:
        """The split's column: after X, grouped by feature, in the order splits are added."""
        self.tables.setdefault(feature, []).append(goes_right)
        return -(feature + 1) * 1_000_000 - len(self.tables[feature])  # resolved by `column`

    def column(self, feature_id: int) -> int:
        if feature_id >= 0:
            return feature_id
        feature, nth = divmod(-feature_id, 1_000_000)
        before = sum(len(t) for f, t in self.tables.items() if f < feature - 1)
        return self.n_features + before + nth - 1


def _goes_right(model: Any, node: Any, bitsets: np.ndarray, known: np.ndarray) -> np.ndarray:
    """scikit-learn's categorical split (its _predictor.pyx) for every code 0..255 and missing:
    left when in the split's set, right when a known category outside it, and unknown or
    missing categories go where missing values go."""
    codes = np.arange(MISSING_ROW, dtype=np.uint32)

    def member(bits: np.ndarray) -> np.ndarray:
        return ((bits[codes // 32] >> (codes % 32)) & 1).astype(bool)

    missing_right = not bool(node["missing_go_to_left"])
    right = np.where(member(bitsets[node["bitset_idx"]]), False,
                     np.where(member(known), True, missing_right))  # fmt: skip
    return np.append(right, missing_right).astype(np.float64)


def _tree_attributes(model: Any, splits: CategoricalSplits) -> dict[str, Any]:
    n_targets = int(model.n_trees_per_iteration_)
    known_bitsets, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
    tree_ids: list[int] = []
    node_ids: list[int] = []
    features: list[int] = []
    modes: list[str] = []
    thresholds: list[float] = []
    true_ids: list[int] = []
    false_ids: list[int] = []
    missing: list[int] = []
    leaf_tree: list[int] = []
    leaf_node: list[int] = []
    leaf_target: list[int] = []
    leaf_weight: list[float] = []
    for iteration, predictors in enumerate(model._predictors):
        for target, predictor in enumerate(predictors):
            tree = iteration * n_targets + target
            nodes = predictor.nodes
            for i, node in enumerate(nodes):
                tree_ids.append(tree)
                node_ids.append(i)
                if node["is_leaf"]:
                    features.append(0)
                    modes.append("LEAF")
                    thresholds.append(0.0)
                    true_ids.append(0)
                    false_ids.append(0)
                    missing.append(0)
                    leaf_tree.append(tree)
                    leaf_node.append(i)
                    leaf_target.append(target)
                    leaf_weight.append(float(node["value"]))
                elif node["is_categorical"]:
                    feature = int(node["feature_idx"])
                    known = known_bitsets[f_idx_map[feature]]
                    goes_right = _goes_right(model, node, predictor.raw_left_cat_bitsets, known)
                    features.append(splits.add(feature, goes_right))
                    modes.append("BRANCH_LEQ")
                    thresholds.append(0.5)
                    true_ids.append(int(node["left"]))
                    false_ids.append(int(node["right"]))
                    missing.append(0)  # the synthetic column is never NaN
                else:
                    # scikit-learn: NaN goes left when missing_go_to_left, else x <= t goes left.
                    features.append(int(node["feature_idx"]))
                    modes.append("BRANCH_LEQ")
                    thresholds.append(float(node["num_threshold"]))
                    true_ids.append(int(node["left"]))
                    false_ids.append(int(node["right"]))
                    missing.append(int(bool(node["missing_go_to_left"])))
    baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
    return {
        "n_targets": n_targets,
        "aggregate_function": "SUM",
        "post_transform": "NONE",
        "nodes_treeids": tree_ids,
        "nodes_nodeids": node_ids,
        "nodes_featureids": features,
        "nodes_modes": modes,
        "nodes_values_as_tensor": numpy_helper.from_array(np.asarray(thresholds, np.float64)),
        "nodes_truenodeids": true_ids,
        "nodes_falsenodeids": false_ids,
        "nodes_missing_value_tracks_true": missing,
        "target_treeids": leaf_tree,
        "target_nodeids": leaf_node,
        "target_ids": leaf_target,
        "target_weights_as_tensor": numpy_helper.from_array(np.asarray(leaf_weight, np.float64)),
        "base_values_as_tensor": numpy_helper.from_array(baseline),
    }


def _input_columns(scope: Any, operator: Any, container: Any) -> list[tuple[str, bool]]:
    """One [N, k] variable per model input, with whether it holds strings."""
    return [(v.full_name, isinstance(v.type, StringTensorType)) for v in operator.inputs]


def _column(scope: Any, container: Any, inputs: list[tuple[str, bool]], index: int) -> tuple[str, bool]:
    """Column `index` of the model's input, whether given as one matrix or one per column."""
    if len(inputs) > 1:
        return inputs[index]
    name, is_string = inputs[0]
    at = scope.get_unique_variable_name("column_index")
    container.add_initializer(at, TensorProto.INT64, [1], [index])
    out = scope.get_unique_variable_name("column")
    container.add_node("Gather", [name, at], out, axis=1, name=scope.get_unique_operator_name("Gather"))
    return out, is_string


def _as_double(scope: Any, container: Any, name: str) -> str:
    out = scope.get_unique_variable_name("as_double")
    container.add_node("Cast", name, out, to=TensorProto.DOUBLE, name=scope.get_unique_operator_name("Cast"))
    return str(out)


def _encoded(scope: Any, container: Any, name: str, is_string: bool, categories: Any) -> str:
    """The OrdinalEncoder scikit-learn puts in front: a category's code, unknown -> NaN."""
    known = [c for c in categories if not (isinstance(c, float) and np.isnan(c)) and c is not None]
    attrs: dict[str, Any] = {
        "values_floats": [float(i) for i in range(len(known))],
        "default_float": float("nan"),
    }
    if is_string:
        attrs["keys_strings"] = [str(c) for c in known]
        source = name
    else:
        attrs["keys_floats"] = [float(c) for c in known]
        source = scope.get_unique_variable_name("as_float")
        container.add_node(
            "Cast", name, source, to=TensorProto.FLOAT, name=scope.get_unique_operator_name("Cast")
        )
    codes = scope.get_unique_variable_name("codes")
    container.add_node("LabelEncoder", source, codes, op_domain="ai.onnx.ml", op_version=2,
                       name=scope.get_unique_operator_name("LabelEncoder"), **attrs)  # fmt: skip
    return _as_double(scope, container, codes)


def _preprocessed(scope: Any, operator: Any, container: Any) -> str:
    """X as the trees see it, in float64: scikit-learn's own preprocessor (categories to
    codes first, then the numeric columns) where the model has one."""
    model = operator.raw_operator
    inputs = _input_columns(scope, operator, container)
    preprocessor = getattr(model, "_preprocessor", None)
    if preprocessor is None:
        if any(is_string for _, is_string in inputs):
            raise ConversionError("HistGradientBoosting reads strings only through categorical_features")
        parts = [_as_double(scope, container, name) for name, _ in inputs]
    else:
        parts = []
        for kind, transformer, mask in preprocessor.transformers_:
            indices = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.atleast_1d(mask)
            for j, index in enumerate(indices):
                name, is_string = _column(scope, container, inputs, int(index))
                if kind == "encoder":
                    parts.append(_encoded(scope, container, name, is_string, transformer.categories_[j]))
                elif kind != "remainder":
                    parts.append(_as_double(scope, container, name))
    if len(parts) == 1:
        return parts[0]
    matrix = scope.get_unique_variable_name("x_double")
    container.add_node("Concat", parts, matrix, axis=1, name=scope.get_unique_operator_name("Concat"))
    return str(matrix)


def _with_split_columns(scope: Any, container: Any, x: str, splits: CategoricalSplits) -> str:
    """`x` with one column per categorical split appended (see CategoricalSplits)."""
    if not splits.tables:
        return x
    var, node = scope.get_unique_variable_name, scope.get_unique_operator_name
    parts = [x]
    for feature, tables in sorted(splits.tables.items()):
        at = var("feature")
        container.add_initializer(at, TensorProto.INT64, [1], [feature])
        column = var("category")
        container.add_node("Gather", [x, at], column, axis=1, name=node("Gather"))
        # A code outside 0..255, or NaN, reads the "missing" row; codes truncate to ints as
        # scikit-learn's uint8 cast does.
        low, high, missing_row = var("low"), var("high"), var("missing_row")
        container.add_initializer(low, TensorProto.DOUBLE, [], [0.0])
        container.add_initializer(high, TensorProto.DOUBLE, [], [float(MISSING_ROW)])
        container.add_initializer(missing_row, TensorProto.DOUBLE, [], [float(MISSING_ROW)])
        nan, below, above, outside, outside_any = var("nan"), var("below"), var("above"), var("o"), var("oa")
        container.add_node("IsNaN", column, nan, name=node("IsNaN"))
        container.add_node("Less", [column, low], below, name=node("Less"))
        container.add_node("GreaterOrEqual", [column, high], above, name=node("GreaterOrEqual"))
        container.add_node("Or", [below, above], outside, name=node("Or"))
        container.add_node("Or", [outside, nan], outside_any, name=node("Or"))
        row, row_int, flat = var("row"), var("row_int"), var("row_flat")
        container.add_node("Where", [outside_any, missing_row, column], row, name=node("Where"))
        container.add_node("Cast", row, row_int, to=TensorProto.INT64, name=node("Cast"))
        flat_shape = var("flat_shape")
        container.add_initializer(flat_shape, TensorProto.INT64, [1], [-1])
        container.add_node("Reshape", [row_int, flat_shape], flat, name=node("Reshape"))
        table = var("split_table")
        values = np.column_stack(tables)
        container.add_initializer(table, TensorProto.DOUBLE, list(values.shape), values.ravel().tolist())
        gathered = var("split_columns")
        container.add_node("Gather", [table, flat], gathered, axis=0, name=node("Gather"))
        parts.append(gathered)
    out = var("x_with_splits")
    container.add_node("Concat", parts, out, axis=1, name=node("Concat"))
    return str(out)


def _raw_scores(scope: Any, operator: Any, container: Any, output_index: int) -> str:
    """Summed raw scores, in the element type the declared output has."""
    model = operator.raw_operator
    x = _preprocessed(scope, operator, container)
    splits = CategoricalSplits(n_features=int(model.is_categorical_.size) if model.is_categorical_ is not None
                               else int(model.n_features_in_))  # fmt: skip
    attributes = _tree_attributes(model, splits)
    attributes["nodes_featureids"] = [splits.column(f) for f in attributes["nodes_featureids"]]
    as_double = _with_split_columns(scope, container, x, splits)
    raw = scope.get_unique_variable_name("raw_scores")
    container.add_node(
        "TreeEnsembleRegressor",
        as_double,
        raw,
        op_domain="ai.onnx.ml",
        op_version=ML_OPSET,
        name=scope.get_unique_operator_name("TreeEnsembleRegressor"),
        **attributes,
    )
    # ONNX Runtime sums in double for double thresholds; the declared output may be float.
    typed = scope.get_unique_variable_name("raw_typed")
    container.add_node(
        "Cast",
        raw,
        typed,
        to=guess_proto_type(operator.outputs[output_index].type),
        name=scope.get_unique_operator_name("Cast"),
    )
    return str(typed)


def _convert_classifier(scope: Any, operator: Any, container: Any) -> None:
    model = operator.raw_operator
    raw = _raw_scores(scope, operator, container, 1)
    label_out, proba_out = operator.outputs[0].full_name, operator.outputs[1].full_name
    if model.n_trees_per_iteration_ == 1:
        positive = scope.get_unique_variable_name("positive")
        container.add_node("Sigmoid", raw, positive, name=scope.get_unique_operator_name("Sigmoid"))
        one = scope.get_unique_variable_name("one")
        container.add_initializer(one, guess_proto_type(operator.outputs[1].type), [], [1.0])
        negative = scope.get_unique_variable_name("negative")
        container.add_node("Sub", [one, positive], negative, name=scope.get_unique_operator_name("Sub"))
        container.add_node(
            "Concat",
            [negative, positive],
            proba_out,
            axis=1,
            name=scope.get_unique_operator_name("Concat"),
        )
    else:
        container.add_node("Softmax", raw, proba_out, axis=1, name=scope.get_unique_operator_name("Softmax"))
    add_label(scope, container, proba_out, model.classes_, label_out)


def _convert_regressor(scope: Any, operator: Any, container: Any) -> None:
    model = operator.raw_operator
    raw = _raw_scores(scope, operator, container, 0)
    out = operator.outputs[0].full_name
    link = type(model._loss.link).__name__
    if link == "IdentityLink":
        container.add_node("Identity", raw, out, name=scope.get_unique_operator_name("Identity"))
    elif link == "LogLink":
        container.add_node("Exp", raw, out, name=scope.get_unique_operator_name("Exp"))
    else:
        raise ConversionError(f"HistGradientBoostingRegressor with a {link} is not supported")


def _number_type(operator: Any) -> Any:
    numeric = [v.type for v in operator.inputs if not isinstance(v.type, StringTensorType)]
    return (
        DoubleTensorType
        if not numeric or any(isinstance(t, DoubleTensorType) for t in numeric)
        else FloatTensorType
    )


def _classifier_shape(operator: Any) -> None:
    """skl2onnx's linear-classifier check refuses string inputs; categories arrive as strings."""
    n = operator.inputs[0].get_first_dimension()
    labels = np.asarray(operator.raw_operator.classes_)
    label_type = Int64TensorType if labels.dtype.kind in "biu" else StringTensorType
    operator.outputs[0].type = label_type([n])
    operator.outputs[1].type = _number_type(operator)([n, len(labels)])


def _regressor_shape(operator: Any) -> None:
    operator.outputs[0].type = _number_type(operator)([operator.inputs[0].get_first_dimension(), 1])


def register() -> None:
    update_registered_converter(
        HistGradientBoostingClassifier,
        "SklearnHistGradientBoostingClassifier",
        _classifier_shape,
        _convert_classifier,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
        overwrite=True,
    )
    update_registered_converter(
        HistGradientBoostingRegressor,
        "SklearnHistGradientBoostingRegressor",
        _regressor_shape,
        _convert_regressor,
        overwrite=True,
    )
