"""Convert a fixed part of the zoo where the convert extra resolves at its lowest versions:
`python -m tests.convert.lowest OUT_DIR` in a venv made by .ci/run (uv's --resolution
lowest-direct). Each model is fitted here, saved, converted with its training frame as the
sample, and so proven by the parity check against the records API; the first failure exits 1.
The cases avoid estimator options newer than the lowest scikit-learn (the zoo's own
KBinsDiscretizer(quantile_method=...) came in 1.7)."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.convert.zoo import (
    Case,
    _churn,
    _sk,
    _text_frame,
    churn_preprocessor,
    churn_quantile_normal,
)


def cases() -> list[Case]:
    bc, iris, diabetes, churn, text = (
        _sk(load_breast_cancer), _sk(load_iris), _sk(load_diabetes), _churn(), _text_frame()
    )  # fmt: skip
    chosen: list[tuple[str, Any, tuple[pd.DataFrame, pd.DataFrame, Any]]] = [
        ("bc_logreg", make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)), bc),
        ("bc_hgb", HistGradientBoostingClassifier(max_iter=40, random_state=0), bc),
        ("iris_forest", RandomForestClassifier(n_estimators=30, random_state=0), iris),
        ("diabetes_gboost", GradientBoostingRegressor(n_estimators=40, random_state=0), diabetes),
        ("churn_logreg", make_pipeline(churn_preprocessor(), LogisticRegression(max_iter=2000)), churn),
        ("churn_hgb", make_pipeline(churn_preprocessor(), HistGradientBoostingClassifier(max_iter=40)), churn),
        ("text_and_numbers", make_pipeline(
            ColumnTransformer([("text", TfidfVectorizer(), "review text"), ("num", StandardScaler(), ["stars given"])]),
            LogisticRegression(max_iter=1000),
        ), text),
        ("text_bigrams", make_pipeline(
            ColumnTransformer([("text", TfidfVectorizer(ngram_range=(1, 2), stop_words="english", sublinear_tf=True),
                                "review text"),
                               ("num", StandardScaler(), ["stars given"])]),
            LogisticRegression(max_iter=1000),
        ), text),
        ("churn_quantile_normal", churn_quantile_normal(), churn),
    ]  # fmt: skip
    found = []
    for name, model, (train, test, y) in chosen:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(train, y)
        found.append(Case(name, model, train, test))
    return found + _catboost(bc)


def _catboost(bc: tuple[pd.DataFrame, pd.DataFrame, Any]) -> list[Case]:
    """A .cbm file through the lowest CatBoost's own ONNX export."""
    import catboost

    train, test, y = bc
    model = catboost.CatBoostClassifier(
        iterations=30, depth=4, verbose=0, allow_writing_files=False, random_seed=0
    ).fit(train, y)
    return [Case("catboost_classifier_cbm", model, train, test, suffix=".cbm")]


def main(out: Path) -> int:
    from converters import ConversionError, convert

    print(f"scikit-learn {sklearn.__version__}, pandas {pd.__version__}, numpy {np.__version__}")
    started = time.perf_counter()
    for case in cases():
        path = case.save(out)
        try:
            manifest = convert(path, name=case.name, version="1", repo=out / "repo", sample=case.train)
        except ConversionError as exc:
            print(f"FAILED {case.name}: {exc}")
            return 1
        parity = manifest.parity
        print(f"ok {case.name}: parity {parity.max_abs_diff:.2g} on {parity.rows} rows" if parity else "")
    print(f"converted in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
