"""The convert-time proof of `/explain`: served explanations of sample rows against SHAP
on the original model (shap.TreeExplainer, path-dependent, for trees; shap.LinearExplainer
for linear models), or against exact Shapley values over the same background for sampled
models. shap is a build-time dependency only; without it the check says so and records
no reference."""

from __future__ import annotations

import itertools
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.errors import ConversionError
from gateway.artifacts.manifest import Explain, Manifest

if TYPE_CHECKING:
    import pandas as pd

    from converters.types import Converted

TOLERANCE = 1e-5  # relative to the largest output explained, at least 1e-5 absolute
EXACT_MAX_COLUMNS = 10


def compare(
    explain: Explain, model: Any, framework: str, converted: Converted, manifest: Manifest,
    model_bytes: bytes, rows: pd.DataFrame, table: pd.DataFrame,
) -> tuple[float, str, float]:  # fmt: skip
    """(largest difference, what it was compared with, the tolerance it met)."""
    from converters._explain import _feeds
    from gateway.explain.explainer import Explainer, background_feeds
    from gateway.records.codec import RecordCodec

    codec = RecordCodec(manifest, max_rows=max(len(rows), len(explain.background), 1))
    explainer = Explainer(manifest, model_bytes, background_feeds(manifest, codec))
    feeds = _feeds(manifest, rows)
    if explain.method == "sampling":
        return _against_exact(explainer, feeds)
    ours = explainer.attribute(feeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shap's notices about its own output formats
        reference, base, name = _shap(explain, model, framework, rows, table)
    if reference.shape[1] < ours.phi.shape[1]:
        # Columns after the last one the model reads (a ColumnTransformer dropped them)
        # have nothing mapped onto them: they contribute nothing.
        missing = ours.phi.shape[1] - reference.shape[1]
        reference = np.pad(reference, ((0, 0), (0, missing), (0, 0)))
    if reference.shape[2] > ours.phi.shape[2]:  # shap explains both classes of a binary margin
        reference, base = reference[:, :, explain.targets], base[explain.targets]
    got = ours.phi
    # Trees whose leaf values ONNX keeps in float32 (boosters, skl2onnx's gradient boosting)
    # differ from the original by float32 rounding, relative to the output's size.
    outputs = base[None, :] + reference.sum(axis=1)
    tolerance = TOLERANCE * max(1.0, float(np.abs(outputs).max(initial=0.0)))
    error = float(np.abs(got - reference).max(initial=0.0))
    error = max(error, float(np.abs(ours.base[:, : base.shape[0]] - base[None, :]).max(initial=0.0)))
    if error > tolerance:
        worst = np.unravel_index(np.abs(got - reference).argmax(), got.shape)
        raise ConversionError(
            f"explain: contributions differ from {name} by {error:.3g} (> {tolerance:.3g}); worst: row "
            f"{worst[0]}, column {manifest.features[worst[1]].name!r}: served {got[worst]:.6g}, "
            f"shap {reference[worst]:.6g}"
        )
    return error, name, tolerance


def _shap(explain: Explain, model: Any, framework: str, rows: pd.DataFrame,
          table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:  # fmt: skip
    final, encode = _split(model, framework)
    x = encode(rows)
    if explain.method == "linear":
        # shap.LinearExplainer's interventional values are exactly coef * (x - mean of the
        # background) (tests/serve/test_explain.py compares with it): computed here from
        # scikit-learn's own transform, without importing shap (seconds per convert).
        coef = np.atleast_2d(np.asarray(final.coef_, dtype=np.float64))
        mean = np.asarray(encode(table), dtype=np.float64).mean(axis=0)
        values = (np.asarray(x, dtype=np.float64) - mean)[:, :, None] * coef.T[None, :, :]
        base = coef @ mean + np.atleast_1d(np.asarray(final.intercept_, dtype=np.float64))
        return _onto_columns(values, explain), base, "coef * (x - sample mean) on the original pipeline"
    try:
        import shap  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConversionError("explain: the check needs shap: pip install 'onnx-gateway[convert]'") from exc
    name = "shap.TreeExplainer(feature_perturbation='tree_path_dependent')"
    if _category_splits(final):
        values, base = _per_row(shap, final, rows if not hasattr(model, "steps") else x)
        return _onto_columns(values, explain), base, name + ", per row, category splits resolved"
    if _multiclass_gradient_boosting(final):
        values, base = _per_class(shap, final, np.asarray(x, dtype=np.float64))
        return _onto_columns(values, explain), base, name + ", one tree ensemble per class"
    try:
        explainer = shap.TreeExplainer(final, feature_perturbation="tree_path_dependent")
    except Exception as exc:  # shap's InvalidModelError: a model it cannot explain
        raise NoReference(str(exc)) from exc
    values = np.asarray(explainer.shap_values(x), dtype=np.float64)
    if values.ndim == 2:
        values = values[:, :, None]
    if values.shape[0] != len(rows):  # shap < 0.45: a list of (rows, features) per class
        values = np.moveaxis(values, 0, 2)
    base = np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))
    return _onto_columns(values, explain), base, name


class NoReference(ValueError):
    """SHAP cannot explain this model: nothing to prove the exact method against, so the
    model is sampled instead."""


def _multiclass_gradient_boosting(final: Any) -> bool:
    from sklearn.ensemble import GradientBoostingClassifier

    return isinstance(final, GradientBoostingClassifier) and final.estimators_.shape[1] > 1


def _per_class(shap: Any, final: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """shap.TreeExplainer on each class's trees, given as the tree dictionaries shap reads:
    shap refuses a multi-class GradientBoostingClassifier whole, but each class's margin is
    its own sum of regression trees (times the learning rate) on the initial estimate."""
    init = (
        final.decision_function(x[:1])[0]
        - sum(  # the initial estimate, per class
            final.learning_rate * np.array([e.predict(x[:1])[0] for e in stage])
            for stage in final.estimators_
        )
    )
    values, bases = [], []
    for k in range(final.estimators_.shape[1]):
        trees = [_tree_dict(e.tree_, final.learning_rate) for e in final.estimators_[:, k]]
        model = {"trees": trees, "base_offset": float(init[k]), "tree_output": "raw_value",
                 "input_dtype": np.float32, "internal_dtype": np.float64}  # fmt: skip
        explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
        values.append(np.asarray(explainer.shap_values(x), dtype=np.float64))
        bases.append(float(np.ravel(explainer.expected_value)[0]))
    return np.stack(values, axis=2), np.asarray(bases)


def _category_splits(final: Any) -> bool:
    categorical = getattr(final, "is_categorical_", None)
    return hasattr(final, "_predictors") and categorical is not None and bool(categorical.any())


def _per_row(shap: Any, final: Any, rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """shap.TreeExplainer on HistGradientBoosting with category splits, which its own
    reader takes for thresholds. Path-dependent TreeSHAP reads a split's test only where
    it follows the row being explained (elsewhere it weighs both sides by cover), so for
    one row each category split can be given to shap as a threshold that sends that row
    where scikit-learn's bitsets send it: row by row, the values are shap's, exactly."""
    preprocessor = getattr(final, "_preprocessor", None)
    x = np.asarray(preprocessor.transform(rows) if preprocessor is not None else rows, dtype=np.float64)
    n_targets = int(final.n_trees_per_iteration_)
    baseline = np.asarray(final._baseline_prediction, dtype=np.float64).ravel()
    values, bases = np.zeros((len(x), x.shape[1], n_targets)), np.zeros(n_targets)
    for k in range(n_targets):
        trees = [_hgb_tree(final, p[k]) for p in final._predictors]
        for r in range(len(x)):
            model = {"trees": [_for_row(tree, splits, x[r]) for tree, splits in trees],
                     "base_offset": float(baseline[k]), "tree_output": "raw_value",
                     "input_dtype": np.float64, "internal_dtype": np.float64}  # fmt: skip
            explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
            values[r, :, k] = np.asarray(explainer.shap_values(x[r : r + 1]), dtype=np.float64).reshape(-1)
            bases[k] = float(np.ravel(explainer.expected_value)[0])
    return values, bases


def _hgb_tree(final: Any, predictor: Any) -> tuple[dict[str, np.ndarray], list[tuple[int, int, np.ndarray]]]:
    """A predictor as shap's tree dictionary, and its category splits: (node, feature,
    goes right per code 0..255 and missing), as our ONNX converter computes them."""
    from converters._hist_gradient_boosting import _goes_right

    nodes = predictor.nodes
    leaf = nodes["is_leaf"].astype(bool)
    left, right = np.where(leaf, -1, nodes["left"]), np.where(leaf, -1, nodes["right"])
    known, where = final._bin_mapper.make_known_categories_bitsets()
    splits = [
        (i, int(node["feature_idx"]),
         _goes_right(final, node, predictor.raw_left_cat_bitsets, known[where[int(node["feature_idx"])]]))
        for i, node in enumerate(nodes) if node["is_categorical"] and not node["is_leaf"]
    ]  # fmt: skip
    tree = {
        "children_left": left, "children_right": right,
        "children_default": np.where(nodes["missing_go_to_left"].astype(bool), left, right),
        "features": np.where(leaf, -2, nodes["feature_idx"]),
        "thresholds": nodes["num_threshold"].astype(np.float64),
        "values": nodes["value"].astype(np.float64)[:, None],
        "node_sample_weight": nodes["count"].astype(np.float64),
    }  # fmt: skip
    return tree, splits


def _for_row(
    tree: dict[str, np.ndarray], splits: list[tuple[int, int, np.ndarray]], row: np.ndarray
) -> dict[str, np.ndarray]:
    thresholds, default = tree["thresholds"].copy(), tree["children_default"].copy()
    for node, feature, goes_right in splits:
        value = row[feature]
        code = int(value) if np.isfinite(value) and 0 <= value < 256 else 256
        right = bool(goes_right[code])
        thresholds[node] = -1e300 if right else 1e300
        default[node] = tree["children_right"][node] if right else tree["children_left"][node]
    return {**tree, "thresholds": thresholds, "children_default": default}


def _tree_dict(tree: Any, scale: float) -> dict[str, np.ndarray]:
    leaf = tree.children_left < 0
    left_missing = getattr(tree, "missing_go_to_left", np.ones(tree.node_count, dtype=bool)).astype(bool)
    default = np.where(left_missing, tree.children_left, tree.children_right)
    return {
        "children_left": tree.children_left, "children_right": tree.children_right,
        "children_default": np.where(leaf, -1, default),
        "features": np.where(leaf, -2, tree.feature), "thresholds": tree.threshold.astype(np.float64),
        "values": tree.value[:, 0, :1].astype(np.float64) * scale,
        "node_sample_weight": tree.weighted_n_node_samples.astype(np.float64),
    }  # fmt: skip


def _onto_columns(values: np.ndarray, explain: Explain) -> np.ndarray:
    # The model's own features: the columns our converter adds after them (a category
    # split's) are explained as the feature they read.
    columns = np.asarray(explain.columns[: values.shape[1]])
    onto = np.zeros((len(columns), int(columns.max(initial=-1)) + 1))
    onto[np.arange(len(columns)), columns] = 1.0
    summed: np.ndarray = np.einsum("rjt,ju->rut", values, onto)
    return summed


def _split(model: Any, framework: str) -> tuple[Any, Any]:
    """The final estimator and the function that turns sample rows into its input."""
    if hasattr(model, "steps"):
        from sklearn.pipeline import Pipeline

        from converters.sklearn import _reads_text

        front = Pipeline(model.steps[:-1])
        text = _reads_text(model)  # a vectorizer first reads the one text column, not a table

        def encode(rows: pd.DataFrame) -> np.ndarray:
            out = front.transform(rows.iloc[:, 0] if text else rows)
            return np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype=np.float64)

        return model.steps[-1][1], encode
    names = getattr(model, "feature_names_in_", None)

    def plain(rows: pd.DataFrame) -> Any:
        if names is not None or framework in ("xgboost", "lightgbm"):
            return rows.astype("float64") if framework != "sklearn" else rows
        return rows.to_numpy(dtype=np.float64)

    return model, plain


def _against_exact(explainer: Any, feeds: dict[str, np.ndarray]) -> tuple[float, str, float]:
    """Sampling against exact Shapley values over the same background rows, computed with
    every coalition through the same ONNX session: the estimate must lie within its
    stated bound (three times the 95 % half-width, so that 64 rows rarely fail by luck)."""
    width = len(explainer.names)
    name = "exact Shapley values over the same background (all coalitions)"
    rows = {n: v[:8] for n, v in feeds.items()}
    ours = explainer.attribute(rows)
    if width > EXACT_MAX_COLUMNS:
        bound = float(ours.error.max(initial=0.0)) if ours.error is not None else 0.0
        return 0.0, f"none: {width} columns are too many to enumerate; the bound is the estimate's own", bound
    exact = _exact(explainer, rows, width)
    diff = np.abs(ours.phi - exact).max(axis=(1, 2))
    bound = 3 * ours.error + 1e-9
    if (diff > bound).any():
        raise ConversionError(
            f"explain: sampling estimates differ from exact Shapley values by {diff.max():.3g}, beyond "
            f"their bound {bound[diff.argmax()]:.3g}"
        )
    return float(diff.max(initial=0.0)), name, float(bound.max(initial=0.0))


def _exact(explainer: Any, feeds: dict[str, np.ndarray], width: int) -> np.ndarray:
    from math import factorial

    masks = np.asarray(list(itertools.product([False, True], repeat=width)), dtype=bool)  # (2^M, M)
    background = explainer._background
    rows = next(iter(feeds.values())).shape[0]
    n_bg = next(iter(background.values())).shape[0]
    values = []
    for r in range(rows):
        one = {n: v[r : r + 1] for n, v in feeds.items()}
        stacked = np.repeat(masks[None, :, :], n_bg, axis=0)  # (bg, 2^M, M)
        hybrid = explainer._hybrids(one, stacked, np.arange(n_bg), 1)
        f = explainer._predict(hybrid).reshape(n_bg, len(masks), -1).mean(axis=0)  # (2^M, T)
        values.append(f)
    f_all = np.stack(values)  # (rows, 2^M, T)
    index = {tuple(m): i for i, m in enumerate(masks)}
    phi = np.zeros((rows, width, f_all.shape[2]))
    for i, m in enumerate(masks):
        size = int(m.sum())
        for j in np.flatnonzero(~m):
            with_j = list(m)
            with_j[j] = True
            weight = factorial(size) * factorial(width - size - 1) / factorial(width)
            phi[:, j, :] += weight * (f_all[:, index[tuple(with_j)], :] - f_all[:, i, :])
    return phi
