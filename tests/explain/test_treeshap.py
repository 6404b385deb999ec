"""TreeSHAP in numpy against shap.TreeExplainer (path-dependent) on small fitted trees."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestRegressor
from sklearn.tree import DecisionTreeRegressor

from gateway.artifacts.manifest import TreeTables
from gateway.explain.graph import with_outputs
from gateway.explain.treeshap import TreeShap

shap = pytest.importorskip("shap")


def _tables(model, classifier: bool) -> TreeTables:
    estimators = getattr(model, "estimators_", [model])
    roots, feature, threshold, yes, no, missing, cover, values = [], [], [], [], [], [], [], []
    offset = 0
    targets = model.n_classes_ if classifier else 1
    for estimator in estimators:
        tree = estimator.tree_
        roots.append(offset)
        for i in range(tree.node_count):
            leaf = tree.children_left[i] == -1
            feature.append(-1 if leaf else int(tree.feature[i]))
            threshold.append(float(tree.threshold[i]))
            yes.append(-1 if leaf else offset + int(tree.children_left[i]))
            no.append(-1 if leaf else offset + int(tree.children_right[i]))
            missing.append(bool(tree.missing_go_to_left[i]))
            cover.append(float(tree.weighted_n_node_samples[i]))
            value = tree.value[i, 0] if classifier else tree.value[i, :, 0]
            values += (value / value.sum() if classifier else value).tolist() if leaf else [0.0] * targets
        offset += tree.node_count
    return TreeTables(
        roots=roots,
        feature=feature,
        threshold=threshold,
        yes=yes,
        no=no,
        missing_yes=missing,
        cover=cover,
        values=values,
        n_targets=targets,
        scale=1 / len(estimators),
    )


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 5))
    x[rng.random(x.shape) < 0.05] = np.nan  # scikit-learn trees route missing values
    y = np.nan_to_num(x[:, 0]) * 2 + np.nan_to_num(x[:, 1] * x[:, 2]) + rng.normal(size=300)
    return x, y


@pytest.mark.parametrize(
    "model",
    [
        DecisionTreeRegressor(max_depth=6, random_state=0),
        RandomForestRegressor(20, max_depth=8, random_state=0),
    ],
)
def test_regressors_match_shap_and_add_up(model):
    x, y = _data()
    model.fit(x, y)
    ours = TreeShap(_tables(model, False))
    rows = x[:40].astype(np.float32).astype(np.float64)
    phi = ours.shap_values(rows)[..., 0]
    reference = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
    assert np.abs(phi - reference.shap_values(rows)).max() < 1e-9
    assert ours.expected[0] == pytest.approx(float(np.ravel(reference.expected_value)[0]), abs=1e-9)
    assert np.abs(phi.sum(axis=1) + ours.expected[0] - model.predict(rows)).max() < 1e-9


def test_classifier_per_class_and_summed_columns():
    x, y = _data(1)
    model = ExtraTreesClassifier(10, max_depth=5, random_state=0).fit(x, (y > 0).astype(int) + (y > 2))
    ours = TreeShap(_tables(model, True))
    rows = x[:30].astype(np.float32).astype(np.float64)
    phi = ours.shap_values(rows)
    reference = np.asarray(
        shap.TreeExplainer(model, feature_perturbation="tree_path_dependent").shap_values(rows)
    )
    assert np.abs(phi - reference).max() < 1e-9
    # Columns 0 and 1 as one user column, 2..4 as another: their sums, exactly.
    summed = ours.shap_values(rows, np.asarray([0, 0, 1, 1, 1]), 2)
    assert np.abs(summed[:, 0] - phi[:, :2].sum(axis=1)).max() < 1e-12
    assert np.abs(summed.sum(axis=1) + ours.expected - model.predict_proba(rows)).max() < 1e-9


def test_a_graph_value_becomes_an_output():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["hidden"]), helper.make_node("Abs", ["hidden"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    session = ort.InferenceSession(with_outputs(model, ["hidden"]), providers=["CPUExecutionProvider"])
    x = np.asarray([[1.0, -2.0]], dtype=np.float32)
    y, hidden = session.run(["y", "hidden"], {"x": x})
    assert hidden.tolist() == [[-1.0, 2.0]] and y.tolist() == [[1.0, 2.0]]


def test_large_models_take_the_slower_paths_to_the_same_values(monkeypatch):
    """Past the pattern tables' memory bound the same numbers come from the recurrence."""
    from gateway.explain import treeshap

    x, y = _data(2)
    model = RandomForestRegressor(10, max_depth=7, random_state=0).fit(x, y)
    rows = x[:25].astype(np.float32).astype(np.float64)
    fast = TreeShap(_tables(model, False)).shap_values(rows, np.asarray([0, 1, 1, 2, 2]), 3)
    monkeypatch.setattr(treeshap, "TABLE_ELEMENTS", 0)
    slow = TreeShap(_tables(model, False))
    assert all(g.table is None for g in slow.groups)
    assert np.abs(slow.shap_values(rows, np.asarray([0, 1, 1, 2, 2]), 3) - fast).max() < 1e-12


def test_long_paths_share_their_distinct_patterns_exactly():
    """Rows that satisfy the same elements of a long path get its weights from one
    computation: the same numbers as the per-row recurrence, to the last bit."""
    from gateway.explain.treeshap import _distinct_unwound, _unwound

    rng = np.random.default_rng(5)
    for length in (1, 7, 12, 20):
        one = rng.random((40, 30, length)) < 0.7
        one[:20] = one[20:]  # half the rows repeat the other half's patterns
        zero = rng.uniform(0.05, 1.0, (30, length))
        want = _unwound(one.astype(np.float64), zero, length)
        assert np.array_equal(_distinct_unwound(one, zero, length), want)


def test_category_set_splits_match_the_same_tree_as_thresholds():
    """Codes {0, 1} then {0} on one feature are the thresholds 1.5 then 0.5: the same
    SHAP values, with the two set splits merged into one element as thresholds are."""
    from gateway.artifacts.manifest import CategorySplit

    tree = dict(roots=[0], yes=[1, 3, 5, -1, -1, -1, -1], no=[2, 4, 6, -1, -1, -1, -1],
                missing_yes=[False] * 7, cover=[100.0, 60.0, 40.0, 25.0, 35.0, 10.0, 30.0],
                values=[0.0, 0.0, 0.0, 1.0, -2.0, 0.5, 3.0], n_targets=1)  # fmt: skip
    numeric = TreeTables(feature=[0, 0, 1, -1, -1, -1, -1], threshold=[1.5, 0.5, 0.0, 0, 0, 0, 0], **tree)
    sets = TreeTables(
        feature=[2, 3, 1, -1, -1, -1, -1], threshold=[0.5, 0.5, 0.0, 0, 0, 0, 0], **tree,
        categories=[CategorySplit(column=2, feature=0, yes=[0, 1]), CategorySplit(column=3, feature=0, yes=[0])],
    )  # fmt: skip
    # Missing and out-of-range codes read the missing row (256), which no set holds: the
    # "no" side, where the thresholds send NaN (missing_yes false) and 300.
    rows = np.array(
        [[0.0, -1.0], [1.0, 2.0], [2.0, -0.5], [7.0, 1.0], [1.0, -3.0], [np.nan, 0.5], [300.0, -1.0]]
    )
    want = TreeShap(numeric).shap_values(rows)
    got = TreeShap(sets).shap_values(rows)
    assert np.abs(got - want).max() < 1e-14 and np.abs(want).max() > 0.1
    assert TreeShap(sets).expected == pytest.approx(TreeShap(numeric).expected)
