"""Everyday transforms convert through our own converters (converters/_function.py), proven
by the parity check; a function ONNX has no operator for is refused in one line naming it."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.datasets import load_diabetes
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, QuantileTransformer, StandardScaler

from converters import ConversionError, convert
from converters.parity import serve_predict


@pytest.fixture(scope="module")
def data():
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    return x.abs() * 100, y  # positive, as log-transformed columns are


def _convert(tmp_path, model, x):
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    return convert(path, name="m", version="1", repo=tmp_path / "repo", sample=x)


CASES = {
    "log1p_columns": lambda: make_pipeline(FunctionTransformer(np.log1p), StandardScaler(), Ridge()),
    "log1p_some_columns": lambda: make_pipeline(ColumnTransformer(
        [("log", FunctionTransformer(np.log1p), ["bmi", "bp"]), ("rest", "passthrough", ["age", "s1"])]), Ridge()),
    "sqrt_abs_identity": lambda: make_pipeline(FunctionTransformer(np.abs), FunctionTransformer(np.sqrt),
                                               FunctionTransformer(None), Ridge()),
    "target_log1p": lambda: TransformedTargetRegressor(regressor=Ridge(), func=np.log1p, inverse_func=np.expm1),
    "target_log_trees": lambda: TransformedTargetRegressor(
        regressor=HistGradientBoostingRegressor(max_iter=20, random_state=0), func=np.log, inverse_func=np.exp),
    "target_scaled_pipeline": lambda: TransformedTargetRegressor(
        regressor=make_pipeline(StandardScaler(), Ridge()), transformer=StandardScaler()),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_everyday_transforms_convert_with_parity(case, data, tmp_path):
    x, y = data
    model = CASES[case]().fit(x, y)
    manifest = _convert(tmp_path, model, x)
    assert manifest.parity is not None and manifest.parity.rows == len(x)
    model_bytes = (tmp_path / "repo" / "m" / "1" / "model.onnx").read_bytes()
    got = serve_predict(model_bytes, manifest, x).value
    np.testing.assert_allclose(got.ravel(), model.predict(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: make_pipeline(FunctionTransformer(np.log10), Ridge()),
         "FunctionTransformer(func=log10) has no ONNX equivalent: use numpy's log1p, log, expm1, exp"),
        (lambda: TransformedTargetRegressor(regressor=Ridge(), func=np.cbrt, inverse_func=np.cbrt, check_inverse=False),
         "TransformedTargetRegressor(inverse_func=cbrt) has no ONNX equivalent"),
        (lambda: TransformedTargetRegressor(regressor=Ridge(), transformer=QuantileTransformer(n_quantiles=50)),
         "TransformedTargetRegressor(transformer=QuantileTransformer) is not supported"),
    ],
)  # fmt: skip
def test_a_transform_without_an_onnx_equivalent_is_refused_in_one_line(make, named, data, tmp_path):
    x, y = data
    with pytest.raises(ConversionError) as caught:
        _convert(tmp_path, make().fit(x, y), x)
    message = str(caught.value)
    assert named in message, message
    assert "\n" not in message and message.count(named) == 1 and "sklearn-onnx/issues" not in message
    assert len(message) < 400, message


def test_word_ngrams_are_refused_by_option_before_parity_would_fail(tmp_path):
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = pd.DataFrame({"review": ["I love it", "a bad buy, broke", "love the price", "it is bad"] * 10})
    y = np.array([1, 0, 1, 0] * 10)
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression()).fit(texts["review"], y)
    with pytest.raises(ConversionError) as caught:
        _convert(tmp_path, model, texts)
    message = str(caught.value)
    assert "TfidfVectorizer(ngram_range=(1, 2)) cannot be converted exactly" in message, message
    assert "ngram_range=(1, 1)" in message and "\n" not in message
