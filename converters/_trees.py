"""Our converter for scikit-learn's decision trees, random forests and extra trees,
registered with skl2onnx.

scikit-learn casts X to float32, compares it with float64 thresholds, and sums the trees'
outputs in float64. skl2onnx rounds thresholds and leaf values to float32 and sums in
float32, so a forest's 25/25 vote comes out 0.49999994/0.50000006 and its label flips,
and regressions miss by ~1e-6 relative. This converter does what scikit-learn does:
Cast to float32, then to float64, one TreeEnsembleRegressor with float64 thresholds and
leaf values summed in float64 (ONNX Runtime's double kernel; the operator returns the sum
rounded to float32), divided by the tree count;
a classifier's label is the first class of highest probability, as `predict` gives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, numpy_helper
from skl2onnx import update_registered_converter
from skl2onnx.common.data_types import guess_proto_type
from skl2onnx.shape_calculators.linear_classifier import calculate_linear_classifier_output_shapes
from skl2onnx.shape_calculators.linear_regressor import calculate_linear_regressor_output_shapes
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.tree import (
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    ExtraTreeClassifier,
    ExtraTreeRegressor,
)

from converters.errors import ConversionError

ML_OPSET = 3
CLASSIFIERS = (DecisionTreeClassifier, ExtraTreeClassifier, RandomForestClassifier, ExtraTreesClassifier)
REGRESSORS = (DecisionTreeRegressor, ExtraTreeRegressor, RandomForestRegressor, ExtraTreesRegressor)


def _trees(model: Any) -> list[Any]:
    return list(model.estimators_) if hasattr(model, "estimators_") else [model]


def _leaf_values(tree: Any, classifier: bool) -> np.ndarray:
    """Per node, what the tree predicts there: class probabilities as scikit-learn's
    predict_proba normalises them, or the regression outputs."""
    if not classifier:
        return np.asarray(tree.value[:, :, 0], dtype=np.float64)
    proba = np.asarray(tree.value[:, 0, :], dtype=np.float64)
    normaliser = proba.sum(axis=1, keepdims=True)
    normaliser[normaliser == 0.0] = 1.0
    normalised: np.ndarray = proba / normaliser
    return normalised


def _attributes(model: Any, classifier: bool) -> dict[str, Any]:
    n_targets = len(model.classes_) if classifier else int(model.n_outputs_)
    columns: dict[str, list[Any]] = {k: [] for k in (
        "tree", "node", "feature", "mode", "threshold", "true", "false", "missing",
        "leaf_tree", "leaf_node", "leaf_target", "leaf_weight")}  # fmt: skip
    for t, estimator in enumerate(_trees(model)):
        tree = estimator.tree_
        values = _leaf_values(tree, classifier)
        missing_left = getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, dtype=np.uint8))
        for i in range(tree.node_count):
            left, right = int(tree.children_left[i]), int(tree.children_right[i])
            leaf = left == -1
            columns["tree"].append(t)
            columns["node"].append(i)
            columns["feature"].append(0 if leaf else int(tree.feature[i]))
            columns["mode"].append("LEAF" if leaf else "BRANCH_LEQ")
            columns["threshold"].append(0.0 if leaf else float(tree.threshold[i]))
            columns["true"].append(0 if leaf else left)
            columns["false"].append(0 if leaf else right)
            columns["missing"].append(0 if leaf else int(bool(missing_left[i])))
            if leaf:
                for k in range(n_targets):
                    columns["leaf_tree"].append(t)
                    columns["leaf_node"].append(i)
                    columns["leaf_target"].append(k)
                    columns["leaf_weight"].append(float(values[i, k]))
    return {
        "n_targets": n_targets,
        "aggregate_function": "SUM",
        "post_transform": "NONE",
        "nodes_treeids": columns["tree"],
        "nodes_nodeids": columns["node"],
        "nodes_featureids": columns["feature"],
        "nodes_modes": columns["mode"],
        "nodes_values_as_tensor": numpy_helper.from_array(np.asarray(columns["threshold"], np.float64)),
        "nodes_truenodeids": columns["true"],
        "nodes_falsenodeids": columns["false"],
        "nodes_missing_value_tracks_true": columns["missing"],
        "target_treeids": columns["leaf_tree"],
        "target_nodeids": columns["leaf_node"],
        "target_ids": columns["leaf_target"],
        "target_weights_as_tensor": numpy_helper.from_array(np.asarray(columns["leaf_weight"], np.float64)),
    }


def _mean_of_trees(scope: Any, operator: Any, container: Any, classifier: bool) -> str:
    """The trees' mean output in float64, from X cast to float32 as scikit-learn does."""
    model = operator.raw_operator
    if classifier and int(getattr(model, "n_outputs_", 1)) != 1:
        raise ConversionError(f"multi-output {type(model).__name__} is not supported")
    var, node = scope.get_unique_variable_name, scope.get_unique_operator_name
    as_float, as_double = var("x_float32"), var("x_float64")
    container.add_node(
        "Cast", operator.inputs[0].full_name, as_float, to=TensorProto.FLOAT, name=node("Cast")
    )
    container.add_node("Cast", as_float, as_double, to=TensorProto.DOUBLE, name=node("Cast"))
    summed = var("tree_sum")
    container.add_node(
        "TreeEnsembleRegressor", as_double, summed, op_domain="ai.onnx.ml", op_version=ML_OPSET,
        name=node("TreeEnsembleRegressor"), **_attributes(model, classifier),
    )  # fmt: skip
    # The operator sums in float64 but hands the sum back as float32 (its only output type).
    summed_double = var("tree_sum_double")
    container.add_node("Cast", summed, summed_double, to=TensorProto.DOUBLE, name=node("Cast"))
    count = var("tree_count")
    container.add_initializer(count, TensorProto.DOUBLE, [], [float(len(_trees(model)))])
    mean = var("tree_mean")
    container.add_node("Div", [summed_double, count], mean, name=node("Div"))
    return str(mean)


def add_label(scope: Any, container: Any, scores: str, classes: Any, out: str) -> None:
    """`out` = the first class of highest score, as scikit-learn's `predict` picks it
    (ONNX has no bool tensors here: a bool target travels as int64)."""
    var, node = scope.get_unique_variable_name, scope.get_unique_operator_name
    index, table = var("argmax"), var("classes")
    container.add_node("ArgMax", scores, index, axis=1, keepdims=0, name=node("ArgMax"))
    labels = np.asarray(classes)
    if labels.dtype.kind in "biu":
        container.add_initializer(table, TensorProto.INT64, [len(labels)], labels.astype(np.int64).tolist())
    else:
        container.add_initializer(table, TensorProto.STRING, [len(labels)], [str(c).encode() for c in labels])
    container.add_node("Gather", [table, index], out, axis=0, name=node("Gather"))


def _convert_classifier(scope: Any, operator: Any, container: Any) -> None:
    mean = _mean_of_trees(scope, operator, container, classifier=True)
    add_label(scope, container, mean, operator.raw_operator.classes_, operator.outputs[0].full_name)
    proba_type = guess_proto_type(operator.outputs[1].type)
    container.add_node("Cast", mean, operator.outputs[1].full_name, to=proba_type,
                       name=scope.get_unique_operator_name("Cast"))  # fmt: skip


def _convert_regressor(scope: Any, operator: Any, container: Any) -> None:
    mean = _mean_of_trees(scope, operator, container, classifier=False)
    out_type = guess_proto_type(operator.outputs[0].type)
    container.add_node("Cast", mean, operator.outputs[0].full_name, to=out_type,
                       name=scope.get_unique_operator_name("Cast"))  # fmt: skip


_ALIASES = {
    DecisionTreeClassifier: "SklearnDecisionTreeClassifier",
    ExtraTreeClassifier: "SklearnExtraTreeClassifier",
    RandomForestClassifier: "SklearnRandomForestClassifier",
    ExtraTreesClassifier: "SklearnExtraTreesClassifier",
    DecisionTreeRegressor: "SklearnDecisionTreeRegressor",
    ExtraTreeRegressor: "SklearnExtraTreeRegressor",
    RandomForestRegressor: "SklearnRandomForestRegressor",
    ExtraTreesRegressor: "SklearnExtraTreesRegressor",
}


def register() -> None:
    for model, alias in _ALIASES.items():
        if issubclass(model, CLASSIFIERS):
            update_registered_converter(
                model, alias, calculate_linear_classifier_output_shapes, _convert_classifier,
                options={"zipmap": [True, False, "columns"], "nocl": [True, False]}, overwrite=True,
            )  # fmt: skip
        else:
            update_registered_converter(
                model, alias, calculate_linear_regressor_output_shapes, _convert_regressor, overwrite=True
            )
