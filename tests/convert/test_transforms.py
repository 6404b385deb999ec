"""Everyday transforms convert through our own converters (converters/_function.py,
converters/_quantile.py), proven by the parity check; a function ONNX has no operator for
is refused in one line naming it."""

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
    "quantile_normal_ridge": lambda: make_pipeline(
        QuantileTransformer(output_distribution="normal", n_quantiles=100), Ridge()),
    "quantile_normal_trees": lambda: make_pipeline(
        QuantileTransformer(output_distribution="normal", n_quantiles=50),
        HistGradientBoostingRegressor(max_iter=20, random_state=0)),
    "quantile_uniform_trees": lambda: make_pipeline(
        QuantileTransformer(n_quantiles=50), HistGradientBoostingRegressor(max_iter=20, random_state=0)),
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


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_the_quantile_transform_is_scikit_learns_beyond_the_bounds_on_ties_and_nan(distribution):
    """The graph alone against QuantileTransformer.transform: values below, at and beyond the
    learnt bounds, repeated training values (repeated quantiles), and NaN passing through."""
    import onnxruntime as ort
    from skl2onnx import to_onnx

    import converters.sklearn  # noqa: F401  registers our converter

    rng = np.random.default_rng(0)
    train = np.column_stack(
        [rng.normal(0, 1, 400), rng.integers(0, 5, 400).astype(float), rng.gamma(1, 3, 400)]
    )
    model = QuantileTransformer(output_distribution=distribution, n_quantiles=60).fit(train)
    x = np.concatenate([train[:50], train.min(0, keepdims=True), train.max(0, keepdims=True),
                        train.min(0, keepdims=True) - 1e-8, train.max(0, keepdims=True) * 10,
                        -train.max(0, keepdims=True) * 10, np.full((1, 3), np.nan)])  # fmt: skip
    x[3, 1] = np.nan
    graph = to_onnx(model, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    want = model.transform(x)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    # Interpolation is numpy's to the bit; the inverse normal CDF is scipy's up to ONNX
    # Runtime's log in the tails (an ulp or two).
    np.testing.assert_allclose(got, want, rtol=4e-15, atol=0)
    if distribution == "uniform":
        assert np.array_equal(got, want, equal_nan=True)


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


REVIEWS = ["I love a price, it is fair", "a bad buy, broke at once", "love the price!", "it is bad", "the the love",
           "délicieux et rapide, café crème", "Ünïcode wörds ça 42 x2 _under_score", "", "déjà vu, déjà vu"]  # fmt: skip


@pytest.mark.parametrize(("vectorizer", "options"), [
    ("CountVectorizer", {}), ("TfidfVectorizer", {}), ("CountVectorizer", {"stop_words": "english"}),
    ("TfidfVectorizer", {"stop_words": ["it", "is"]}), ("TfidfVectorizer", {"sublinear_tf": True}),
])  # fmt: skip
def test_word_ngrams_convert_exactly_with_scikit_learns_tokens(vectorizer, options, tmp_path):
    """Words of one letter dropped between two others ("love a price" has the bigram "love
    price"), accented words kept whole ("café", not "caf"), stop words removed before n-grams
    are formed ("love the price" has "love price" too), and sublinear_tf's 1 + log(tf), as
    scikit-learn does."""
    import pandas as pd
    from sklearn.feature_extraction import text
    from sklearn.linear_model import LogisticRegression

    texts = pd.DataFrame({"review": REVIEWS * 4})
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0, 1] * 4)
    vectors = getattr(text, vectorizer)(ngram_range=(1, 3), **options)
    model = make_pipeline(vectors, LogisticRegression(C=100.0)).fit(texts["review"], y)
    manifest = _convert(tmp_path, model, texts)
    assert manifest.parity is not None and manifest.parity.label_agreement == 1.0
    queries = pd.DataFrame({"review": ["love a price", "café crème et déjà", "price love", "", "a",
                                       "it is love the price", "the the the", "love it is the price it", "love love love"]})  # fmt: skip
    got = serve_predict((tmp_path / "repo" / "m" / "1" / "model.onnx").read_bytes(), manifest, queries)
    np.testing.assert_allclose(got.probabilities, model.predict_proba(queries["review"]), atol=1e-6)
    assert vectors.transform(["love a price"])[0, vectors.vocabulary_["love price"]] > 0


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ({"token_pattern": r"\b\w+\b"}, "TfidfVectorizer(ngram_range=(1, 2), token_pattern='\\\\b\\\\w+\\\\b') "
                                         "cannot be converted exactly"),
        ({"tokenizer": str.split, "token_pattern": None}, "TfidfVectorizer(ngram_range=(1, 2), token_pattern=None) "
                                                          "cannot be converted exactly"),
    ],
)  # fmt: skip
def test_word_ngrams_are_refused_by_option_where_onnx_would_differ(option, named, tmp_path):
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = pd.DataFrame({"review": ["I love it", "a bad buy, broke", "love the price", "it is bad"] * 10})
    y = np.array([1, 0, 1, 0] * 10)
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), **option), LogisticRegression()).fit(
        texts["review"], y
    )
    with pytest.raises(ConversionError) as caught:
        _convert(tmp_path, model, texts)
    message = str(caught.value)
    assert named in message, message
    assert "ngram_range=(1, 1)" in message and "\n" not in message
