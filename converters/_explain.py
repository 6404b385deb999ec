"""What `/explain` needs, recorded at convert time, and the proof that it is right.

ONNX TreeEnsemble nodes keep thresholds and leaf values but not the training covers that
path-dependent TreeSHAP weighs by: they are read from the original model and matched to
the ONNX nodes by walking both trees together. For trees and linear models the method
explains the estimator's input, a value inside the ONNX graph, so the map from each of
its columns back to the user column it came from is read off the fitted pipeline. Other
models are sampled against rows of the training sample. Then the served explanations of
sample rows are compared with SHAP's on the original model, as parity compares
predictions: a mismatch fails the build.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from converters.errors import ConversionError
from gateway.artifacts.manifest import (
    CategorySplit,
    Explain,
    ExplainCheck,
    ExplainOutput,
    Linear,
    Manifest,
    TreeTables,
)

if TYPE_CHECKING:
    import pandas as pd

    from converters.types import Converted

CHECK_ROWS = 64
BACKGROUND_ROWS = 32
_BRANCHES: dict[str, tuple[bool, bool]] = {"BRANCH_LEQ": (False, False), "BRANCH_LT": (True, False),
             "BRANCH_GT": (False, True), "BRANCH_GTE": (True, True)}  # fmt: skip
# Original trees as (left, right, cover) per node, root first, in ONNX tree order.
Original = list[tuple[list[int], list[int], list[float]]]


def record(model: Any, framework: str, converted: Converted, table: pd.DataFrame) -> Explain | None:
    """The explanation method for this model, or None where it has no user columns."""
    if converted.layout == "tensors" or not converted.features:
        return None
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    classes = converted.classes
    if classes is None and _values_per_row(converted, table) != 1:
        return None  # several values a row (multi-output regression): not explained yet
    columns = _column_map(model, [f.name for f in converted.features])
    tree_node = _tree_node(converted.onnx_model)
    if tree_node is not None and columns is not None:
        original = _original_trees(framework, model, final)
        if original is not None:
            return _tree_explain(tree_node, original, final, classes, columns, framework)
    if columns is not None and hasattr(final, "coef_") and hasattr(final, "intercept_"):
        linear = _linear_node_input(converted.onnx_model)
        if linear is not None:
            return _linear_explain(final, classes, columns, linear)
    return _sampling_explain(converted, table)


def _values_per_row(converted: Converted, table: pd.DataFrame) -> int:
    value = converted.predict(table.iloc[:2]).value
    if value is None:
        return 1
    size = np.asarray(value).size
    return size // 2 if size % 2 == 0 else 0


# --- trees ---------------------------------------------------------------------------


def _tree_node(onnx_model: Any) -> Any:
    nodes = [n for n in onnx_model.graph.node if n.op_type.startswith("TreeEnsemble")]
    return nodes[0] if len(nodes) == 1 else None


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    values = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.name.endswith("_as_tensor"):
            values[a.name.removesuffix("_as_tensor")] = numpy_helper.to_array(v).tolist()
        else:
            values[a.name] = v.decode() if isinstance(v, bytes) else v
    return values


def _tree_explain(
    node: Any, original: Original, final: Any, classes: list[Any] | None, columns: list[int], framework: str
) -> Explain | None:
    a = _attributes(node)
    leaf_prefix = "class" if node.op_type == "TreeEnsembleClassifier" else "target"
    modes = [m.decode() if isinstance(m, bytes) else m for m in a["nodes_modes"]]
    branches = [m for m in modes if m != "LEAF"]
    if any(m not in _BRANCHES for m in branches) or len({_BRANCHES[m][0] for m in branches}) > 1:
        return None  # set membership or mixed tests: sampled instead
    strict = any(_BRANCHES[m][0] for m in branches)
    key = {(t, n): i for i, (t, n) in enumerate(zip(a["nodes_treeids"], a["nodes_nodeids"], strict=True))}
    count = len(modes)
    yes, no = [-1] * count, [-1] * count
    missing = [bool(m) for m in a.get("nodes_missing_value_tracks_true", [0] * count)]
    for i, mode in enumerate(modes):
        if mode == "LEAF":
            continue
        tree = a["nodes_treeids"][i]
        yes[i], no[i] = key[(tree, a["nodes_truenodeids"][i])], key[(tree, a["nodes_falsenodeids"][i])]
        if _BRANCHES[mode][1]:  # x > t holds where x <= t does not: swap to one test
            yes[i], no[i], missing[i] = no[i], yes[i], not missing[i]
    targets = sorted(set(a[f"{leaf_prefix}_ids"]))
    n_targets = max(targets) + 1
    values = np.zeros((count, n_targets))
    for t, n, k, w in zip(a[f"{leaf_prefix}_treeids"], a[f"{leaf_prefix}_nodeids"],
                          a[f"{leaf_prefix}_ids"], a[f"{leaf_prefix}_weights"], strict=True):  # fmt: skip
        values[key[(t, n)], k] += w
    trees = sorted(set(a["nodes_treeids"]))
    children = {c for c in yes + no if c >= 0}
    roots = [next(i for i, t in enumerate(a["nodes_treeids"]) if t == tree and i not in children)
             for tree in trees]  # fmt: skip
    if len(roots) != len(original):
        raise ConversionError(f"explain: the ONNX graph has {len(roots)} trees, the model {len(original)}")
    cover = [0.0] * count
    for root, tree in zip(roots, original, strict=True):
        _match(root, 0, tree, yes, no, cover)
    ours = _is_our_forest(final)
    scale = 1.0 / len(trees) if ours or a.get("aggregate_function") == "AVERAGE" else 1.0
    classifier = classes is not None
    output: ExplainOutput
    if classifier:
        output = "probability" if ours else "margin"
    else:
        output = "value" if a.get("post_transform", "NONE") == "NONE" else "margin"
    if not classifier and n_targets > 1:
        return None  # multi-output regression: one value per output, sampled instead
    categories = _category_splits(final)
    columns = _through_preprocessor(final, columns)
    # A category split's own column belongs to the user column its feature came from.
    columns = [*columns, *(columns[c.feature] for c in categories)]
    tables = TreeTables(
        roots=roots, feature=[int(f) if m != "LEAF" else -1 for f, m in zip(a["nodes_featureids"], modes,
                                                                              strict=True)],
        threshold=[float(v) for v in a["nodes_values"]], yes=yes, no=no, missing_yes=missing,
        cover=cover, values=values.ravel().tolist(), n_targets=n_targets, strict=strict,
        base=[float(b) for b in a.get("base_values", [])] or [0.0] * n_targets, scale=scale,
        categories=categories,
    )  # fmt: skip
    explained = _targets(classes, n_targets)
    return Explain(method="tree", output=output, targets=explained, encoded=node.input[0],
                   columns=columns, trees=tables)  # fmt: skip


def _through_preprocessor(final: Any, columns: list[int]) -> list[int]:
    """HistGradientBoosting's own preprocessor puts the category columns first: the trees'
    column j is the model's input column the preprocessor's j-th output reads (in the
    order our converter concatenates them)."""
    preprocessor = getattr(final, "_preprocessor", None)
    if preprocessor is None:
        return columns
    order: list[int] = []
    for kind, _, mask in preprocessor.transformers_:
        if kind != "remainder":
            order += (
                np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.atleast_1d(mask)
            ).tolist()
    return [columns[i] for i in order]


def _category_splits(final: Any) -> list[CategorySplit]:
    """Our HistGradientBoosting converter's category splits (see CategoricalSplits): the
    column each one adds after the model's features, the feature it reads and the codes
    that go left, the ONNX node's `yes` (the column holds 0 there: `<= 0.5`)."""
    categorical = getattr(final, "is_categorical_", None)
    if not hasattr(final, "_predictors") or categorical is None or not categorical.any():
        return []
    from converters._hist_gradient_boosting import CategoricalSplits, _tree_attributes

    splits = CategoricalSplits(n_features=int(categorical.size))
    _tree_attributes(final, splits)
    found: list[CategorySplit] = []
    for feature, tables in sorted(splits.tables.items()):
        for goes_right in tables:
            column = splits.n_features + len(found)
            found.append(
                CategorySplit(column=column, feature=feature, yes=np.flatnonzero(goes_right == 0).tolist())
            )
    return found


def _targets(classes: list[Any] | None, n_targets: int) -> list[int]:
    if classes is None:
        return []
    return [1] if n_targets == 1 and len(classes) == 2 else list(range(n_targets))


def _match(onnx_node: int, node: int, tree: tuple[list[int], list[int], list[float]],
           yes: list[int], no: list[int], cover: list[float]) -> None:  # fmt: skip
    left, right, covers = tree
    stack = [(onnx_node, node)]
    while stack:
        o, n = stack.pop()
        cover[o] = float(covers[n])
        if (yes[o] < 0) != (left[n] < 0):
            raise ConversionError("explain: an ONNX tree's shape differs from the model's")
        if yes[o] >= 0:
            stack += [(yes[o], left[n]), (no[o], right[n])]


def _is_our_forest(final: Any) -> bool:
    from converters._trees import CLASSIFIERS, REGRESSORS

    return isinstance(final, CLASSIFIERS + REGRESSORS)


def _original_trees(framework: str, model: Any, final: Any) -> Original | None:
    if framework == "xgboost":
        return _xgboost_trees(model)
    if framework == "lightgbm":
        return _lightgbm_trees(model)
    from converters._trees import _trees

    if _is_our_forest(final):
        return [_sklearn_tree(e.tree_) for e in _trees(final)]
    if hasattr(final, "_predictors"):  # HistGradientBoosting
        return [(_hgb(p.nodes, "left"), _hgb(p.nodes, "right"), p.nodes["count"].astype(float).tolist())
                for predictors in final._predictors for p in predictors]  # fmt: skip
    estimators = getattr(final, "estimators_", None)
    if isinstance(estimators, np.ndarray) and estimators.ndim == 2:  # GradientBoosting: stage, class
        return [_sklearn_tree(e.tree_) for stage in estimators for e in stage]
    return None


def _sklearn_tree(tree: Any) -> tuple[list[int], list[int], list[float]]:
    return (tree.children_left.tolist(), tree.children_right.tolist(),
            tree.weighted_n_node_samples.astype(float).tolist())  # fmt: skip


def _hgb(nodes: Any, side: str) -> list[int]:
    return [int(c) if not leaf else -1 for c, leaf in zip(nodes[side], nodes["is_leaf"], strict=True)]


def _xgboost_trees(model: Any) -> Original:
    booster = model if hasattr(model, "trees_to_dataframe") else model.get_booster()
    frame = booster.trees_to_dataframe()
    trees: Original = []
    for _, rows in frame.groupby("Tree", sort=True):
        ids = {node_id: i for i, node_id in enumerate(rows["ID"])}
        leaf = (rows["Feature"] == "Leaf").tolist()
        left = [-1 if f else ids.get(y, -1) for y, f in zip(rows["Yes"], leaf, strict=True)]
        right = [-1 if f else ids.get(n, -1) for n, f in zip(rows["No"], leaf, strict=True)]
        root = ids[f"{rows['Tree'].iloc[0]}-0"]
        if root != 0:
            raise ConversionError("explain: an XGBoost tree's root is not its first node")
        trees.append((left, right, rows["Cover"].astype(float).tolist()))
    return trees


def _lightgbm_trees(model: Any) -> Original:
    booster = model.booster_ if hasattr(model, "booster_") else model
    trees: Original = []
    for info in booster.dump_model()["tree_info"]:
        left: list[int] = []
        right: list[int] = []
        cover: list[float] = []

        def add(node: dict[str, Any], left: list[int] = left, right: list[int] = right,
                cover: list[float] = cover) -> int:  # fmt: skip
            i = len(cover)
            left.append(-1)
            right.append(-1)
            cover.append(float(node.get("internal_count", node.get("leaf_count", 0))))
            if "split_index" in node:
                left[i] = add(node["left_child"])
                right[i] = add(node["right_child"])
            return i

        add(info["tree_structure"])
        trees.append((left, right, cover))
    return trees


# --- linear ---------------------------------------------------------------------------


def _linear_node_input(onnx_model: Any) -> str | None:
    ops = ("LinearClassifier", "LinearRegressor", "MatMul", "Gemm")
    node = next((n for n in onnx_model.graph.node if n.op_type in ops), None)
    return str(node.input[0]) if node is not None else None


def _linear_explain(final: Any, classes: list[Any] | None, columns: list[int], encoded: str) -> Explain:
    coef = np.atleast_2d(np.asarray(final.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(final.intercept_, dtype=np.float64))
    output: ExplainOutput = "margin" if classes is not None else "value"
    return Explain(
        method="linear", output=output, targets=_targets(classes, coef.shape[0]), encoded=encoded,
        columns=columns,
        linear=Linear(coef=coef.tolist(), intercept=intercept.tolist(), mean=[0.0] * coef.shape[1]),
    )  # fmt: skip


# --- sampling -------------------------------------------------------------------------


def _sampling_explain(converted: Converted, table: pd.DataFrame) -> Explain | None:
    from converters.parity import _records

    has_proba = "probabilities" in converted.roles
    if converted.classes is not None and not has_proba:
        return None  # a label alone has no number to attribute
    rows = table.sample(min(BACKGROUND_ROWS, len(table)), random_state=0) if len(table) else table
    background = _records(rows)
    output: ExplainOutput = "probability" if has_proba else "value"
    targets = list(range(len(converted.classes))) if converted.classes is not None else []
    return Explain(method="sampling", output=output, targets=targets, background=background)


# --- the column map ----------------------------------------------------------------------


def _column_map(model: Any, names: list[str]) -> list[int] | None:
    """For each column the final estimator reads, the user column it came from, or None
    where a step mixes columns (PCA, polynomial features): sampled instead."""
    if not hasattr(model, "steps"):
        return list(range(len(names)))
    found = _steps_map(model.steps[:-1], names)
    return found[0] if found is not None else None


Mapped = tuple[list[int], list[str]]  # per output column its input column; output names


def _steps_map(steps: list[tuple[str, Any]], names: list[str]) -> Mapped | None:
    current, current_names = list(range(len(names))), names
    for _, step in steps:
        inner = _step_map(step, current_names)
        if inner is None:
            return None
        current, current_names = [current[i] for i in inner[0]], inner[1]
    return current, current_names


def _step_map(step: Any, names: list[str]) -> Mapped | None:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if step == "passthrough" or step is None:
        return list(range(len(names))), names
    if isinstance(step, Pipeline):
        return _steps_map(step.steps, names)
    if isinstance(step, ColumnTransformer):
        return _column_transformer_map(step, names)
    try:
        out = [str(n) for n in step.get_feature_names_out(np.asarray(names, dtype=object))]
    except Exception:
        return None
    if len(names) == 1:
        return [0] * len(out), out
    found = []
    for name in out:
        # scikit-learn names an output after its input: itself, input_category (one-hot,
        # bins) or missingindicator_input; the longest input name that fits is the one.
        hits = [i for i, n in enumerate(names)
                if name == n or name.startswith(f"{n}_") or name.endswith(f"_{n}")]  # fmt: skip
        if not hits:
            return None
        found.append(max(hits, key=lambda i: len(names[i])))
    return found, out


def _column_transformer_map(step: Any, names: list[str]) -> Mapped | None:
    width = max((s.stop for s in step.output_indices_.values()), default=0)
    out: list[int] = [-1] * width
    out_names = [""] * width
    for name, transformer, cols in step.transformers_:
        where = step.output_indices_[name]
        if where.stop == where.start or transformer == "drop":
            continue
        picked = [names.index(c) if isinstance(c, str) else int(c) for c in np.atleast_1d(cols)]
        inner = _step_map(transformer, [names[i] for i in picked])
        if inner is None and len(picked) == 1:  # a text vectorizer: every output from its one column
            inner = [0] * (where.stop - where.start), [""] * (where.stop - where.start)
        if inner is None or len(inner[0]) != where.stop - where.start:
            return None
        out[where] = [picked[i] for i in inner[0]]
        out_names[where] = inner[1]
    return None if -1 in out else (out, out_names)


# --- proof --------------------------------------------------------------------------------


def finish(
    explain: Explain, model: Any, framework: str, converted: Converted, manifest: Manifest,
    model_bytes: bytes, table: pd.DataFrame,
) -> Explain | None:  # fmt: skip
    """Fill what needs the served graph (the background mean of a linear model's input),
    then compare served explanations of sample rows with SHAP's on the original model."""
    from gateway.explain.explainer import Explainer

    manifest = msgspec.structs.replace(manifest, explain=explain)
    rows = table.iloc[:CHECK_ROWS]
    if explain.method != "sampling":
        encoded = Explainer(manifest, model_bytes).encoded(_feeds(manifest, table))
        if encoded.shape[1] != len(explain.columns):
            # The estimator reads columns the pipeline does not make one by one (our
            # HistGradientBoosting's category splits): attribute in the user's columns instead.
            sampled = _sampling_explain(converted, table)
            if sampled is None:
                return None
            return finish(sampled, model, framework, converted, manifest, model_bytes, table)
    if explain.method == "linear" and explain.linear is not None:
        linear = msgspec.structs.replace(explain.linear, mean=encoded.mean(axis=0).tolist())
        explain = msgspec.structs.replace(explain, linear=linear)
        manifest = msgspec.structs.replace(manifest, explain=explain)
    from converters._explain_check import NoReference, compare

    try:
        error, reference, tolerance = compare(
            explain, model, framework, converted, manifest, model_bytes, rows, table
        )
    except NoReference:
        sampled = _sampling_explain(converted, table)
        if sampled is None or explain.method == "sampling":
            return None
        return finish(sampled, model, framework, converted, manifest, model_bytes, table)
    check = ExplainCheck(rows=len(rows), reference=reference, max_abs_diff=error, tolerance=tolerance)
    return msgspec.structs.replace(explain, check=check)


def _feeds(manifest: Manifest, table: pd.DataFrame) -> dict[str, np.ndarray]:
    from converters.parity import _records
    from gateway.records.codec import RecordCodec

    codec = RecordCodec(manifest, max_rows=max(1, len(table)))
    payload, form = codec.decode(msgspec.json.encode({"instances": _records(table)}))
    feeds, _ = codec.to_feeds(payload, form)
    return dict(feeds)
