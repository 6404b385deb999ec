"""A fitted search object dumped whole (the notebook's `joblib.dump(search, ...)`) converts as
the best estimator it refitted, named as such in the manifest."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters import ConversionError, convert
from converters.parity import serve_predict


def _convert(tmp_path, search, x):
    path = tmp_path / "search.joblib"
    joblib.dump(search, path)
    return convert(path, name="searched", version="1", repo=tmp_path / "repo", sample=x)


def _served(tmp_path, manifest, x):
    model_bytes = (tmp_path / "repo" / "searched" / "1" / "model.onnx").read_bytes()
    return serve_predict(model_bytes, manifest, x)


def test_a_grid_search_converts_as_its_best_estimator(tmp_path):
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                          {"logisticregression__C": [0.1, 1.0]}, cv=3).fit(x, y)  # fmt: skip
    manifest = _convert(tmp_path, search, x)
    assert manifest.source.estimator == (
        "Pipeline(StandardScaler, LogisticRegression) (best_estimator_ of GridSearchCV)"
    )
    got = _served(tmp_path, manifest, x)
    np.testing.assert_allclose(got.probabilities, search.predict_proba(x), atol=1e-6)


def test_a_randomized_search_converts_too(tmp_path):
    x, y = load_iris(return_X_y=True, as_frame=True)
    search = RandomizedSearchCV(RandomForestClassifier(random_state=0), {"n_estimators": [5, 10, 20]},
                                n_iter=2, cv=3, random_state=0).fit(x, y)  # fmt: skip
    manifest = _convert(tmp_path, search, x)
    assert manifest.source.estimator == "RandomForestClassifier (best_estimator_ of RandomizedSearchCV)"
    assert (_served(tmp_path, manifest, x).label.astype(int) == search.predict(x)).all()


def test_a_search_without_refit_is_refused_in_one_line(tmp_path):
    x, y = load_iris(return_X_y=True, as_frame=True)
    search = GridSearchCV(LogisticRegression(max_iter=500), {"C": [0.1, 1.0]}, cv=3, refit=False).fit(x, y)
    with pytest.raises(ConversionError) as caught:
        _convert(tmp_path, search, x)
    message = str(caught.value)
    assert "GridSearchCV(refit=False) holds no fitted model" in message and "\n" not in message


def test_a_search_over_xgboost_converts_with_the_xgboost_converter(tmp_path):
    xgboost = pytest.importorskip("xgboost")
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    search = GridSearchCV(xgboost.XGBClassifier(n_estimators=10, max_depth=2), {"max_depth": [2, 3]},
                          cv=3).fit(x, y)  # fmt: skip
    manifest = _convert(tmp_path, search, x)
    assert manifest.source.framework == "xgboost"
    np.testing.assert_allclose(
        _served(tmp_path, manifest, x).probabilities, search.predict_proba(x), atol=1e-5
    )
