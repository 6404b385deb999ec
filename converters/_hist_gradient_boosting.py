"""Our converter for scikit-learn's HistGradientBoosting models, registered with skl2onnx.

skl2onnx 1.20 fails on these with scikit-learn 1.9 (`nodes_missing_value_tracks_true`
arrives as booleans) and, once forced through, its probabilities differ from
scikit-learn's by up to 0.14. This converter emits one TreeEnsembleRegressor that sums
the raw scores with double-precision thresholds and leaf values (as scikit-learn does),
then applies the loss's inverse link: sigmoid, softmax, exp or identity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, numpy_helper
from skl2onnx import update_registered_converter
from skl2onnx.common.data_types import guess_proto_type
from skl2onnx.shape_calculators.linear_classifier import (
    calculate_linear_classifier_output_shapes,
)
from skl2onnx.shape_calculators.linear_regressor import (
    calculate_linear_regressor_output_shapes,
)
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from converters.errors import ConversionError

ML_OPSET = 3


def _tree_attributes(model: Any) -> dict[str, Any]:
    n_targets = int(model.n_trees_per_iteration_)
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
            if np.any(nodes["is_categorical"]):
                raise ConversionError(
                    "HistGradientBoosting with categorical_features is not supported; "
                    "one-hot or ordinal-encode those columns in the pipeline instead"
                )
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


def _raw_scores(scope: Any, operator: Any, container: Any, output_index: int) -> str:
    """Summed raw scores, in the element type the declared output has."""
    model = operator.raw_operator
    as_double = scope.get_unique_variable_name("x_double")
    container.add_node(
        "Cast",
        operator.inputs[0].full_name,
        as_double,
        to=TensorProto.DOUBLE,
        name=scope.get_unique_operator_name("Cast"),
    )
    raw = scope.get_unique_variable_name("raw_scores")
    container.add_node(
        "TreeEnsembleRegressor",
        as_double,
        raw,
        op_domain="ai.onnx.ml",
        op_version=ML_OPSET,
        name=scope.get_unique_operator_name("TreeEnsembleRegressor"),
        **_tree_attributes(model),
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
    index = scope.get_unique_variable_name("argmax")
    container.add_node(
        "ArgMax", proba_out, index, axis=1, keepdims=0, name=scope.get_unique_operator_name("ArgMax")
    )
    classes = scope.get_unique_variable_name("classes")
    labels = model.classes_
    if np.issubdtype(labels.dtype, np.integer):
        container.add_initializer(classes, TensorProto.INT64, [len(labels)], labels.astype(np.int64).tolist())
    else:
        container.add_initializer(
            classes, TensorProto.STRING, [len(labels)], [str(c).encode() for c in labels]
        )
    container.add_node(
        "Gather", [classes, index], label_out, axis=0, name=scope.get_unique_operator_name("Gather")
    )


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


def register() -> None:
    update_registered_converter(
        HistGradientBoostingClassifier,
        "SklearnHistGradientBoostingClassifier",
        calculate_linear_classifier_output_shapes,
        _convert_classifier,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
        overwrite=True,
    )
    update_registered_converter(
        HistGradientBoostingRegressor,
        "SklearnHistGradientBoostingRegressor",
        calculate_linear_regressor_output_shapes,
        _convert_regressor,
        overwrite=True,
    )
