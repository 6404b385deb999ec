"""CatBoost models as notebooks save them (`.cbm` files and joblib pickles of the scikit-learn
API) convert through CatBoost's own ONNX export, proven by the parity check; categorical
features, which that export cannot carry, are refused in one line naming the columns."""

from __future__ import annotations

import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from converters import ConversionError, convert
from converters.parity import serve_predict
from gateway.artifacts.repository import Repository
from tests.conftest import ROOT

catboost = pytest.importorskip("catboost")


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x = x.copy()
    x.loc[::9, "mean texture"] = np.nan  # CatBoost routes missing values itself
    return x, np.asarray(["benign", "malignant"], dtype=object)[y]


def _served(tmp_path, manifest, table):
    path = tmp_path / "repo" / manifest.name / manifest.version / "model.onnx"
    return serve_predict(path.read_bytes(), manifest, table)


def test_a_cbm_classifier_with_string_classes_and_missing_values_serves_its_probabilities(cancer, tmp_path):
    x, y = cancer
    model = catboost.CatBoostClassifier(iterations=30, depth=4, verbose=0, allow_writing_files=False).fit(
        x, y
    )
    model.save_model(str(tmp_path / "model.cbm"))
    manifest = convert(tmp_path / "model.cbm", name="cb", version="1", repo=tmp_path / "repo", sample=x)
    assert manifest.source.framework == "catboost" and manifest.source.estimator == "CatBoostClassifier"
    assert manifest.classes == ["benign", "malignant"]
    assert [f.name for f in manifest.features] == list(x.columns)
    assert all(f.nullable for f in manifest.features)
    assert [(o.name, o.datatype) for o in manifest.outputs] == [("label", "BYTES"), ("probabilities", "FP32")]
    assert manifest.parity is not None and manifest.parity.label_agreement == 1.0
    got = _served(tmp_path, manifest, x)
    np.testing.assert_allclose(got.probabilities, model.predict_proba(x), atol=1e-5)
    assert list(got.label) == list(model.predict(x).ravel())


def test_a_pickled_multiclass_classifier_and_a_pickled_regressor_convert(tmp_path):
    x, y = load_iris(return_X_y=True, as_frame=True)
    classifier = catboost.CatBoostClassifier(
        iterations=20, depth=3, verbose=0, allow_writing_files=False
    ).fit(x, y)
    joblib.dump(classifier, tmp_path / "iris.joblib")
    manifest = convert(tmp_path / "iris.joblib", name="iris", version="1", repo=tmp_path / "repo", sample=x)
    assert manifest.classes == [0, 1, 2] and manifest.task == "classification"
    np.testing.assert_allclose(
        _served(tmp_path, manifest, x).probabilities, classifier.predict_proba(x), atol=1e-5
    )

    d, target = load_diabetes(return_X_y=True, as_frame=True)
    regressor = catboost.CatBoostRegressor(iterations=30, depth=4, verbose=0, allow_writing_files=False).fit(
        d, target
    )
    joblib.dump(regressor, tmp_path / "diabetes.pkl")
    manifest = convert(tmp_path / "diabetes.pkl", name="d", version="1", repo=tmp_path / "repo", sample=d)
    assert manifest.task == "regression" and manifest.source.estimator == "CatBoostRegressor"
    assert [(o.name, o.shape) for o in manifest.outputs] == [("value", [-1, 1])]
    got = _served(tmp_path, manifest, d).value
    np.testing.assert_allclose(got.ravel(), regressor.predict(d), rtol=1e-5)


def test_cli_framework_catboost_reads_a_model_file_of_another_suffix(tmp_path):
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    model = catboost.CatBoostRegressor(iterations=10, depth=3, verbose=0, allow_writing_files=False).fit(x, y)
    model.save_model(str(tmp_path / "model.bin"))
    command = [sys.executable, "-m", "gateway.cli", "convert", str(tmp_path / "model.bin"), "--framework",
               "catboost", "--name", "m", "--version", "1", "--repo", str(tmp_path / "repo")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    manifest = Repository(tmp_path / "repo").manifest("m", "1")
    assert manifest.source.framework == "catboost" and manifest.parity is not None
    assert manifest.parity.sample == "synthesised"


def test_a_file_that_is_not_a_catboost_model_is_refused_by_path(tmp_path):
    (tmp_path / "model.cbm").write_bytes(b"not a model")
    with pytest.raises(ConversionError, match=r"model\.cbm: not a CatBoost model") as caught:
        convert(tmp_path / "model.cbm", name="m", version="1", repo=tmp_path / "repo")
    assert "\n" not in str(caught.value)


def test_categorical_features_are_refused_naming_the_columns_and_nothing_is_written(tmp_path):
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"charges": rng.normal(70, 20, 300), "plan": rng.choice(["basic", "plus", "pro"], 300)})
    y = ((x["plan"] == "pro") ^ (x["charges"] > 70)).astype(int)
    model = catboost.CatBoostClassifier(
        iterations=20, verbose=0, allow_writing_files=False, cat_features=["plan"]
    ).fit(x, y)
    model.save_model(str(tmp_path / "model.cbm"))
    with pytest.raises(ConversionError) as caught:
        convert(tmp_path / "model.cbm", name="m", version="1", repo=tmp_path / "repo", sample=x)
    message = str(caught.value)
    assert "categorical features ['plan'] (cat_features)" in message, message
    assert "numeric features only" in message and "OrdinalEncoder" in message and "\n" not in message
    assert not (tmp_path / "repo" / "m").exists()


def test_a_poisson_regressor_serves_exp_of_the_exported_raw_score(tmp_path):
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    model = catboost.CatBoostRegressor(
        iterations=20, depth=3, verbose=0, allow_writing_files=False, loss_function="Poisson"
    ).fit(x, y)
    joblib.dump(model, tmp_path / "counts.joblib")
    manifest = convert(tmp_path / "counts.joblib", name="p", version="1", repo=tmp_path / "repo", sample=x)
    got = _served(tmp_path, manifest, x).value
    np.testing.assert_allclose(got.ravel(), model.predict(x), rtol=1e-5)


def test_a_multi_target_loss_is_refused_naming_it(tmp_path):
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    targets = np.column_stack([y, np.log(y)])
    model = catboost.CatBoostRegressor(
        iterations=5, verbose=0, allow_writing_files=False, loss_function="MultiRMSE"
    ).fit(x, targets)
    joblib.dump(model, tmp_path / "two.joblib")
    with pytest.raises(ConversionError) as caught:
        convert(tmp_path / "two.joblib", name="t", version="1", repo=tmp_path / "repo", sample=x)
    message = str(caught.value)
    assert "CatBoostRegressor(loss_function='MultiRMSE') predicts several values a row" in message, message
    assert "\n" not in message
