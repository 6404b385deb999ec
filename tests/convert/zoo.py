"""Notebook models as users train them: scikit-learn's bundled data sets as DataFrames with
their real column names, and made-up churn/pricing tables with missing values, strings,
ints, bools, categories and free text. Each case gives a fitted model, the frame it was
trained on (the `--sample`) and held-out rows to send over HTTP."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.base import is_classifier
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_linnerud, load_wine
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    VotingClassifier,
)
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import ElasticNet, LinearRegression, LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    KBinsDiscretizer,
    OneHotEncoder,
    PolynomialFeatures,
    QuantileTransformer,
    StandardScaler,
)
from sklearn.svm import SVC, SVR, LinearSVC
from sklearn.tree import DecisionTreeClassifier


@dataclass
class Case:
    name: str
    model: Any
    train: pd.DataFrame
    test: pd.DataFrame
    # How the user saves it: a joblib pickle, or a booster's own file format.
    suffix: str = ".joblib"
    framework: str | None = None

    def save(self, folder: Path) -> Path:
        path = folder / f"{self.name}{self.suffix}"
        if self.suffix == ".joblib":
            joblib.dump(self.model, path)
        elif self.suffix == ".pt":
            import torch

            torch.jit.save(torch.jit.script(self.model), str(path))
        else:
            self.model.save_model(str(path))
        return path

    def expected(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(labels, probabilities, values) the original gives for the held-out rows."""
        return PREDICTORS.get(self.name, _sklearn_predict)(self.model, self.test)


def _sklearn_predict(model: Any, x: pd.DataFrame) -> tuple[np.ndarray | None, ...]:
    x_in: Any = x.iloc[:, 0] if x.shape[1] == 1 and _reads_text(model) else x
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict(x_in)), np.asarray(model.predict_proba(x_in)), None
    if is_classifier(model):  # LinearSVC, RidgeClassifier: labels only
        return np.asarray(model.predict(x_in)), None, None
    return None, None, np.asarray(model.predict(x_in), dtype=np.float64).reshape(len(x), -1)


def _reads_text(model: Any) -> bool:
    first = model.steps[0][1] if hasattr(model, "steps") else model
    return isinstance(first, TfidfVectorizer)


def _split(x: pd.DataFrame, y: Any, test: int = 40) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    held, kept = order[:test], order[test:]
    y = np.asarray(y)
    return x.iloc[kept].reset_index(drop=True), x.iloc[held].reset_index(drop=True), y[kept]


def _sk(loader: Callable[..., Any]) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    x, y = loader(return_X_y=True, as_frame=True)
    return _split(x, y)


def churn_frame(n: int = 800, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A telecom churn table: missing numbers and strings, ints, bools, odd column names."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure (months)": rng.integers(0, 72, n).astype(float),
            "monthly.charges": rng.normal(70, 25, n).round(2),
            "total-charges": rng.gamma(2.0, 900.0, n).round(2),
            "contract": rng.choice(["month-to-month", "one year", "two year"], n, p=[0.55, 0.25, 0.2]),
            "payment method": rng.choice(["card", "bank transfer", "e-check", "mailed check"], n),
            "région": rng.choice(["nord", "sud", "île"], n),
        }
    )
    frame.loc[rng.random(n) < 0.08, "tenure (months)"] = np.nan
    frame.loc[rng.random(n) < 0.05, "total-charges"] = np.nan
    frame.loc[rng.random(n) < 0.06, "contract"] = np.nan
    frame.loc[rng.random(n) < 0.04, "payment method"] = np.nan
    logit = (
        -0.04 * frame["tenure (months)"].fillna(30)
        + 0.02 * frame["monthly.charges"]
        + (frame["contract"] == "month-to-month") * 1.2
        - 1.0
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame, y


CHURN_NUM = ["tenure (months)", "monthly.charges", "total-charges"]
CHURN_CAT = ["contract", "payment method", "région"]


def churn_preprocessor() -> ColumnTransformer:
    return ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), CHURN_NUM),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
                ),
                CHURN_CAT,
            ),
        ]
    )


def churn_quantile_normal() -> Any:
    """Churn's numbers imputed, then quantile-normal (our own converter), into a forest:
    a zoo case and a lowest-versions case."""
    return make_pipeline(
        ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(strategy="median"),
                                  QuantileTransformer(output_distribution="normal", n_quantiles=200)), CHURN_NUM),
            ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
             CHURN_CAT),
        ]),
        RandomForestClassifier(40, random_state=0),
    )  # fmt: skip


def _churn() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    frame, y = churn_frame()
    return _split(frame, y)


def _integer_frame() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Integer counts: tree thresholds land exactly on scaled integers."""
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.integers(0, 40, size=(800, 6)), columns=[f"count {i}" for i in range(6)])
    y = ((x["count 0"] + 2 * x["count 1"] - x["count 2"] + rng.normal(0, 6, 800)) > 40).astype(int)
    return _split(x, y)


def _typed_frame() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """bool, int and pandas category columns as a notebook has them."""
    rng = np.random.default_rng(2)
    n = 700
    x = pd.DataFrame(
        {
            "is_member": rng.random(n) < 0.4,
            "visits": rng.integers(0, 30, n),
            "basket €": rng.gamma(2.0, 20.0, n),
            "segment": pd.Categorical(rng.choice(["gold", "silver", "bronze"], n)),
        }
    )
    y = (
        (x["is_member"] * 1.5 + 0.1 * x["visits"] + (x["segment"] == "gold") - 2 + rng.normal(0, 1, n)) > 0
    ).astype(int)
    return _split(x, y)


def _shop_frame() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """pandas category columns fed straight to HistGradientBoosting (categorical_features
    'from_dtype', scikit-learn's default): native categorical splits, missing categories."""
    rng = np.random.default_rng(4)
    n = 1200
    colours = ["red", "blue", "green", "black", "white", "pink", "teal", "gold", "navy", "rust"]
    x = pd.DataFrame(
        {
            "size (cm)": rng.normal(30, 8, n),
            "colour": pd.Categorical(rng.choice(colours, n)),
            "grade": rng.integers(0, 6, n).astype(float),
            "shop": pd.Categorical(rng.choice(["north", "south", "online"], n)),
        }
    )
    x.loc[rng.random(n) < 0.05, "colour"] = np.nan
    score = (
        x["colour"].isin(["red", "pink", "gold"]).astype(float)
        + x["size (cm)"] / 10
        + (x["shop"] == "online")
    )
    return _split(x, score.to_numpy() + rng.normal(0, 0.3, n))


TEXTS = [
    "great product fast delivery",
    "terrible support never again",
    "works as expected, good value",
    "broke after two days, refund please",
    "excellent quality and great price",
    "awful experience, slow and rude",
    "good enough for the price",
    "not worth it, poor build",
]


def _signups_frame() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """A CRM export: an id, a sign-up date and notes the pipeline drops, an integer age, an
    income with gaps, a state with gaps (imputed) and a plan."""
    rng = np.random.default_rng(5)
    n = 500
    frame = pd.DataFrame({
        "customer id": np.arange(10_000, 10_000 + n),
        "signed up": [f"2022-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in range(n)],
        "notes": rng.choice(["called twice", "vip", "moved", ""], n),
        "age": rng.integers(18, 80, n),
        "income": rng.normal(50.0, 12.0, n).round(1),
        "state": rng.choice(["CA", "NY", "TX", "WA"], n).astype(object),
        "plan": rng.choice(["basic", "plus", "pro"], n),
    })  # fmt: skip
    frame.loc[rng.random(n) < 0.1, "income"] = np.nan
    frame.loc[rng.random(n) < 0.1, "state"] = np.nan
    y = ((frame["age"] > 45) ^ (frame["plan"] == "pro")).astype(int).to_numpy()
    return _split(frame, y)


def _signups_pipeline() -> Any:
    return make_pipeline(
        ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "income"]),
            ("state", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                    OneHotEncoder(handle_unknown="ignore")), ["state"]),
            ("plan", OneHotEncoder(), ["plan"]),
        ], remainder="drop"),
        LogisticRegression(max_iter=1000),
    )  # fmt: skip


def _text_frame() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 400
    words = " ".join(TEXTS).replace(",", "").split()
    reviews = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(n)]
    positive = np.array([sum(w in r for w in ("great", "good", "excellent", "expected")) for r in reviews])
    x = pd.DataFrame({"review text": reviews, "stars given": rng.integers(1, 6, n).astype(float)})
    y = (positive + rng.normal(0, 0.5, n) > 1).astype(int)
    train, test, y_train = _split(x, y)
    # Held-out reviews the model never saw, with words it never saw either.
    test.loc[:3, "review text"] = ["brand new words here", "GREAT great!!", "", "délicieux et rapide"]
    return train, test, y_train


def _with_labels(y: np.ndarray, labels: list[str]) -> np.ndarray:
    return np.asarray(labels, dtype=object)[y]


def _sklearn_cases() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, model: Any, data: tuple[pd.DataFrame, pd.DataFrame, Any], y: Any = None) -> None:
        train, test, target = data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(train.iloc[:, 0] if _reads_text(model) else train, target if y is None else y)
        cases.append(Case(name, model, train, test))

    bc, iris, wine, diabetes = _sk(load_breast_cancer), _sk(load_iris), _sk(load_wine), _sk(load_diabetes)
    churn, ints, typed, text = _churn(), _integer_frame(), _typed_frame(), _text_frame()
    shop = _shop_frame()
    add("bc_logreg", make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)), bc)
    add("bc_hgb", HistGradientBoostingClassifier(max_iter=40, random_state=0), bc)
    add(
        "bc_mlp",
        make_pipeline(
            StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=400, random_state=0)
        ),
        bc,
    )
    add("bc_gboost", GradientBoostingClassifier(n_estimators=40, random_state=0), bc)
    add("bc_isolation_forest", IsolationForest(n_estimators=50, random_state=0), bc)
    add("signups_dropped_columns", _signups_pipeline(), _signups_frame())
    # The whole search dumped, as notebooks do: it converts as its best_estimator_.
    add("bc_grid_search", GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
                                       {"logisticregression__C": [0.1, 1.0]}, cv=3), bc)  # fmt: skip
    add("bc_linear_svc", make_pipeline(StandardScaler(), LinearSVC()), bc)
    add("iris_soft_voting", VotingClassifier([("lr", LogisticRegression(max_iter=2000)),
        ("forest", RandomForestClassifier(n_estimators=20, random_state=0))], voting="soft"), iris)  # fmt: skip
    add("bc_calibrated_svm", make_pipeline(StandardScaler(), CalibratedClassifierCV(LinearSVC(), cv=3)), bc)
    add("iris_forest", RandomForestClassifier(n_estimators=30, random_state=0), iris)
    add("iris_knn", make_pipeline(StandardScaler(), KNeighborsClassifier(5)), iris)
    add("iris_string_labels", DecisionTreeClassifier(max_depth=4, random_state=0), iris,
        _with_labels(iris[2], ["setosa", "versicolor", "virginica"]))  # fmt: skip
    add("wine_svc", make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)), wine)
    add(
        "wine_scaled_forest",
        make_pipeline(StandardScaler(), RandomForestClassifier(40, random_state=0)),
        wine,
    )
    add("diabetes_hgb", HistGradientBoostingRegressor(max_iter=60, random_state=0), diabetes)
    add("diabetes_linear", LinearRegression(), diabetes)
    add("diabetes_log_target", TransformedTargetRegressor(regressor=make_pipeline(StandardScaler(), Ridge()),
                                                          func=np.log1p, inverse_func=np.expm1), diabetes)  # fmt: skip
    add("diabetes_poly_ridge", make_pipeline(PolynomialFeatures(2), StandardScaler(), Ridge(1.0)), diabetes)
    add("diabetes_elasticnet", make_pipeline(StandardScaler(), ElasticNet(alpha=0.1)), diabetes)
    add("diabetes_gboost", GradientBoostingRegressor(n_estimators=40, random_state=0), diabetes)
    add("diabetes_extra_trees", ExtraTreesRegressor(n_estimators=20, random_state=0), diabetes)
    add("diabetes_svr", make_pipeline(StandardScaler(), SVR(C=50.0)), diabetes)
    add("diabetes_knn", make_pipeline(StandardScaler(), KNeighborsRegressor(7)), diabetes)
    add(
        "diabetes_mlp",
        make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32,), max_iter=800, random_state=0)),
        diabetes,
    )
    add("churn_logreg", make_pipeline(churn_preprocessor(), LogisticRegression(max_iter=2000)), churn)
    add(
        "churn_forest", make_pipeline(churn_preprocessor(), RandomForestClassifier(50, random_state=0)), churn
    )
    add("churn_hgb", make_pipeline(churn_preprocessor(), HistGradientBoostingClassifier(max_iter=40)), churn)
    add("churn_yes_no", make_pipeline(churn_preprocessor(), LogisticRegression(max_iter=2000)), churn,
        _with_labels(churn[2], ["no", "yes"]))  # fmt: skip
    add("churn_constant_fill", make_pipeline(
        ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(strategy="constant", fill_value=-1.0), StandardScaler()), CHURN_NUM),
            ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="unknown"),
                                  OneHotEncoder(handle_unknown="ignore")), CHURN_CAT),
        ]),
        GradientBoostingClassifier(n_estimators=30, random_state=0),
    ), churn)  # fmt: skip
    # log1p on the money columns, NaN passing through it to the imputer after it.
    add("churn_log1p_columns", make_pipeline(
        ColumnTransformer([
            ("money", make_pipeline(FunctionTransformer(np.log1p), SimpleImputer(strategy="median"), StandardScaler()),
             ["monthly.charges", "total-charges"]),
            ("tenure", SimpleImputer(strategy="median"), ["tenure (months)"]),
            ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
             CHURN_CAT),
        ]),
        LogisticRegression(max_iter=2000),
    ), churn)  # fmt: skip
    add("churn_quantile_normal", churn_quantile_normal(), churn)
    add(
        "ints_scaled_forest",
        make_pipeline(StandardScaler(), RandomForestClassifier(50, random_state=0)),
        ints,
    )
    add("ints_kbins", make_pipeline(KBinsDiscretizer(n_bins=4, quantile_method="averaged_inverted_cdf"),
                                    LogisticRegression(max_iter=1000)), ints)  # fmt: skip
    add("typed_columns", make_pipeline(
        ColumnTransformer([
            ("num", StandardScaler(), ["is_member", "visits", "basket €"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["segment"]),
        ]),
        LogisticRegression(max_iter=1000),
    ), typed)  # fmt: skip
    add("text_only", make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)),
        (text[0][["review text"]], text[1][["review text"]], text[2]))  # fmt: skip
    add("text_and_numbers", make_pipeline(
        ColumnTransformer([("text", TfidfVectorizer(), "review text"), ("num", StandardScaler(), ["stars given"])]),
        LogisticRegression(max_iter=1000),
    ), text)  # fmt: skip
    # Word bigrams as scikit-learn forms them: one-letter and stop words skipped, accented words
    # whole; sublinear_tf's 1 + log(tf).
    add("text_bigrams", make_pipeline(
        ColumnTransformer([("text", TfidfVectorizer(ngram_range=(1, 2), stop_words="english", sublinear_tf=True),
                            "review text"),
                           ("num", StandardScaler(), ["stars given"])]),
        LogisticRegression(max_iter=1000),
    ), text)  # fmt: skip
    add(
        "shop_hgb_categories",
        HistGradientBoostingClassifier(max_iter=40, random_state=0),
        shop,
        shop[2] > 4.5,
    )
    add("shop_hgb_regressor", HistGradientBoostingRegressor(max_iter=40, random_state=0), shop)
    # Three targets at once: skl2onnx writes an MLP's as one column of rows x 3.
    add("linnerud_multi_mlp", make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(16,), max_iter=2000, random_state=0)),
        _linnerud())  # fmt: skip
    # A bool column where the model imputes: JSON true/false/null, not a float.
    add("typed_hgb_bool_column", HistGradientBoostingClassifier(max_iter=30, random_state=0),
        (typed[0].drop(columns="segment"), typed[1].drop(columns="segment"), typed[2]))  # fmt: skip
    add("typed_imputed_bool", make_pipeline(
        ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(strategy="most_frequent"), StandardScaler()), ["is_member", "visits"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["segment"]),
        ]),
        SVC(probability=True, random_state=0),
    ), typed)  # fmt: skip
    return cases


def _linnerud() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    x, y = load_linnerud(return_X_y=True, as_frame=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    return (
        x.iloc[order[5:]].reset_index(drop=True),
        x.iloc[order[:5]].reset_index(drop=True),
        y.to_numpy()[order[5:]],
    )


def _booster_cases() -> list[Case]:
    import lightgbm
    import xgboost

    cases: list[Case] = []
    bc_train, bc_test, bc_y = _sk(load_breast_cancer)
    d_train, d_test, d_y = _sk(load_diabetes)
    xgb = xgboost.XGBClassifier(n_estimators=30, max_depth=3).fit(bc_train, bc_y)
    cases.append(Case("xgb_classifier", xgb, bc_train, bc_test))
    booster = xgboost.XGBRegressor(n_estimators=30, max_depth=3).fit(d_train, d_y).get_booster()
    cases.append(Case("xgb_native_booster", booster, d_train, d_test, suffix=".json", framework="xgboost"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lgbm = lightgbm.LGBMClassifier(n_estimators=30, num_leaves=8, verbose=-1).fit(bc_train, bc_y)
        lgbm_reg = lightgbm.LGBMRegressor(n_estimators=30, num_leaves=8, verbose=-1).fit(d_train, d_y)
    cases.append(Case("lgbm_classifier", lgbm, bc_train, bc_test))
    cases.append(
        Case("lgbm_native_booster", lgbm_reg.booster_, d_train, d_test, suffix=".txt", framework="lightgbm")
    )
    return cases


def _catboost_cases() -> list[Case]:
    """CatBoost's classifier saved as a .cbm file, its regressor pickled with joblib; a model
    with categorical features is refused (tests/convert/test_catboost.py)."""
    try:
        import catboost
    except ImportError:
        return []
    bc_train, bc_test, bc_y = _sk(load_breast_cancer)
    d_train, d_test, d_y = _sk(load_diabetes)
    classifier = catboost.CatBoostClassifier(
        iterations=40, depth=4, verbose=0, allow_writing_files=False, random_seed=0
    )
    regressor = catboost.CatBoostRegressor(
        iterations=40, depth=4, verbose=0, allow_writing_files=False, random_seed=0
    )
    return [
        Case("catboost_classifier_cbm", classifier.fit(bc_train, bc_y), bc_train, bc_test, suffix=".cbm"),
        Case("catboost_regressor", regressor.fit(d_train, d_y), d_train, d_test),
    ]


def _xgb_native(model: Any, x: pd.DataFrame) -> tuple[np.ndarray | None, ...]:
    import xgboost

    values = model.predict(xgboost.DMatrix(x, feature_names=model.feature_names))
    return None, None, np.asarray(values, dtype=np.float64).reshape(len(x), -1)


def _lgbm_native(model: Any, x: pd.DataFrame) -> tuple[np.ndarray | None, ...]:
    return None, None, np.asarray(model.predict(x.to_numpy()), dtype=np.float64).reshape(len(x), -1)


def _torch_case() -> list[Case]:
    """A small PyTorch regressor, where torch is installed (it is kept out of the lock)."""
    try:
        import torch
    except ImportError:
        return []
    torch.manual_seed(0)
    train, test, y = _sk(load_diabetes)
    net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    x_t = torch.tensor(train.to_numpy(np.float32))
    y_t = torch.tensor(np.asarray(y, np.float32).reshape(-1, 1))
    for _ in range(200):
        optimiser.zero_grad()
        torch.nn.functional.mse_loss(net(x_t), y_t).backward()
        optimiser.step()
    net.eval()
    return [Case("torch_mlp", net, train, test, suffix=".pt", framework="torch")]


def _anomaly_predict(model: Any, x: pd.DataFrame) -> tuple[np.ndarray | None, ...]:
    return (
        np.asarray(model.predict(x)),
        None,
        np.asarray(model.decision_function(x), np.float64).reshape(-1, 1),
    )


def _torch_predict(model: Any, x: pd.DataFrame) -> tuple[np.ndarray | None, ...]:
    import torch

    with torch.no_grad():
        values = model(torch.tensor(x.to_numpy(np.float32))).numpy()
    return None, None, values.astype(np.float64).reshape(len(x), -1)


PREDICTORS: dict[str, Callable[[Any, pd.DataFrame], tuple[np.ndarray | None, ...]]] = {
    "xgb_native_booster": _xgb_native,
    "lgbm_native_booster": _lgbm_native,
    "torch_mlp": _torch_predict,
    "bc_isolation_forest": _anomaly_predict,
}


def all_cases() -> list[Case]:
    return _sklearn_cases() + _booster_cases() + _catboost_cases() + _torch_case()
