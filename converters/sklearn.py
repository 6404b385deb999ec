"""scikit-learn estimators and pipelines through skl2onnx (plus our HistGradientBoosting fix)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType
from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator
from sklearn.base import BaseEstimator, is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    VotingClassifier,
)
from sklearn.ensemble._forest import BaseForest
from sklearn.ensemble._gb import BaseGradientBoosting
from sklearn.exceptions import NotFittedError
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.model_selection._search import BaseSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder, OrdinalEncoder
from sklearn.tree import BaseDecisionTree
from sklearn.utils.validation import check_is_fitted

from converters import _function, _hist_gradient_boosting, _imputer, _quantile, _svr, _text, _trees
from converters._graph import (
    cast_then,
    drop_unread_inputs,
    label_from_probabilities,
    rename_values,
    rows_of,
    safe_names,
)
from converters.errors import ConversionError
from converters.schema import Encoded, align_sample, feature_names, ignore_unread, infer_features, is_nan
from converters.types import Converted, Predictions
from gateway.artifacts.manifest import Feature, Layout

if TYPE_CHECKING:
    import pandas as pd

# Standard ONNX opset 17 and ai.onnx.ml 3 load on every ONNX Runtime of the last years.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

_function.register()
_hist_gradient_boosting.register()
_imputer.register()
_quantile.register()
_svr.register()
_text.register()
_trees.register()
_HGB = (HistGradientBoostingClassifier, HistGradientBoostingRegressor)
_TEXT = (CountVectorizer, TfidfVectorizer, HashingVectorizer)
# scikit-learn casts X to float32 in these estimators' predict (sklearn.tree DTYPE).
_FLOAT32_TREES = (BaseDecisionTree, BaseForest, BaseGradientBoosting)


def _walk(model: Any) -> list[Any]:
    """Every estimator inside a (nested) pipeline or column transformer, model first."""
    found = [model]
    if isinstance(model, Pipeline):
        for _, step in model.steps:
            found += _walk(step)
    elif isinstance(model, ColumnTransformer):
        for _, transformer, _ in getattr(model, "transformers_", model.transformers):
            if isinstance(transformer, BaseEstimator):
                found += _walk(transformer)
    return found


_OPEN = ("ignore", "infrequent_if_exist")


def _encoded(model: Any) -> dict[str, Encoded]:
    """What the fitted encoders accept, by input column name."""
    known: dict[str, Encoded] = {}
    for part in _walk(model):
        if not isinstance(part, ColumnTransformer):
            continue
        for _, transformer, columns in part.transformers_:
            encoders = [e for e in _walk(transformer) if isinstance(e, OneHotEncoder | OrdinalEncoder)]
            if not encoders or not all(isinstance(c, str) for c in np.atleast_1d(columns)):
                continue
            open_ = getattr(encoders[0], "handle_unknown", "error") in _OPEN
            for column, cats in zip(np.atleast_1d(columns), encoders[0].categories_, strict=False):
                known[str(column)] = _encoder_column(str(column), np.asarray(cats), open_)
    return known


def _encoder_column(column: str, cats: np.ndarray, open_: bool) -> Encoded:
    if np.issubdtype(cats.dtype, np.number):
        finite = cats[np.isfinite(cats.astype(np.float64))].astype(np.float64)
        whole = bool(finite.size) and bool((finite == np.floor(finite)).all())
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
        return Encoded(None, open_, integers=whole, low=low, high=high)
    if any(c is None for c in cats):
        # scikit-learn's imputers take NaN for missing, not None: None was
        # learnt as a category of its own, and a request's null (missing) would be
        # imputed instead, silently predicting something else.
        raise ConversionError(
            f"column {column!r}: the encoder learnt Python None as a category of its "
            "own, which no client can send apart from a missing value (null). Refit with "
            "None replaced by NaN (imputed) or by a string such as 'unknown'"
        )
    return Encoded([str(c) for c in cats if not is_nan(c)], open_)


def _imputed(model: Any, names: list[str]) -> set[str]:
    """Columns the model fills in when missing: all of them behind a top-level imputer or
    a model that routes NaN itself, else those a ColumnTransformer sends to an imputer."""
    top = model.steps if isinstance(model, Pipeline) else [("", model)]
    for _, step in top:
        if isinstance(step, (SimpleImputer, *_HGB)):
            return set(names)
        if isinstance(step, ColumnTransformer):
            imputed: set[str] = set()
            for _, transformer, columns in step.transformers_:
                cols = [str(c) for c in np.atleast_1d(columns)]
                if any(isinstance(p, SimpleImputer) for p in _walk(transformer)):
                    imputed.update(c for c in cols if c in names)
            return imputed
    return set()


def _final(model: Any) -> Any:
    return model.steps[-1][1] if isinstance(model, Pipeline) else model


def _text_columns(model: Any) -> set[str]:
    """Columns a text vectorizer reads (a ColumnTransformer names them as one string)."""
    found: set[str] = set()
    for part in _walk(model):
        if isinstance(part, ColumnTransformer):
            for _, transformer, columns in part.transformers_:
                if isinstance(columns, str) and any(isinstance(p, _TEXT) for p in _walk(transformer)):
                    found.add(columns)
    return found


def _check_vectorizers(model: Any) -> None:
    """Word n-grams beyond one word are scikit-learn's where ONNX sees its tokens: the default
    token pattern, written for RE2 (converters/_text.py), stop words removed before n-grams."""
    for part in _walk(model):
        if not (isinstance(part, _TEXT) and part.analyzer == "word" and part.ngram_range[1] > 1):
            continue
        if not isinstance(part, CountVectorizer):  # HashingVectorizer
            raise ConversionError(
                f"{type(part).__name__}(ngram_range={part.ngram_range}) cannot be converted exactly; "
                "refit with ngram_range=(1, 1)"
            )
        if not _text.default_words(part):
            raise ConversionError(
                f"{type(part).__name__}(ngram_range={part.ngram_range}, token_pattern="
                f"{part.token_pattern!r}) cannot be converted exactly: only the default token pattern "
                "(no tokenizer or preprocessor) is known to tokenize as scikit-learn does; refit with "
                "the default token_pattern or ngram_range=(1, 1)"
            )


def _reads_text(model: Any) -> bool:
    """A pipeline that starts with a text vectorizer reads one text column, not a table."""
    first = model.steps[0][1] if isinstance(model, Pipeline) else model
    return isinstance(first, _TEXT)


class SklearnConverter:
    framework = "sklearn"

    def convert(self, model: Any, sample: pd.DataFrame | None) -> Converted:
        model, found_by = best_of_search(model)
        try:
            check_is_fitted(model)
        except NotFittedError as exc:
            raise ConversionError(f"{type(model).__name__} is not fitted: {exc}") from exc
        _check_vectorizers(model)
        reads_text = _reads_text(model)
        if reads_text:
            names = [str(sample.columns[0])] if sample is not None and sample.shape[1] == 1 else ["text"]
        else:
            names = feature_names(
                getattr(model, "feature_names_in_", None), getattr(model, "n_features_in_", None), sample
            )
        if sample is not None:
            sample = align_sample(sample, names)
        parts = _walk(model)
        free_text = set(names) if reads_text else _text_columns(model)
        features = infer_features(names, sample, _encoded(model), _imputed(model, names), free_text=free_text)
        uses_names = reads_text or any(isinstance(p, ColumnTransformer) for p in parts)
        layout: Layout = "columns" if uses_names or any(f.dtype == "string" for f in features) else "matrix"
        classifier = is_classifier(model)
        onnx_model, precise = _build_graph(model, features, layout, classifier)
        if layout == "columns":
            features = ignore_unread(features, drop_unread_inputs(onnx_model))
        if precise:
            features = [
                msgspec.structs.replace(f, dtype="float64") if f.dtype == "float32" else f for f in features
            ]
        outputs = [o.name for o in onnx_model.graph.output]
        # Plain output names for the V2 API and metrics: label, probabilities (or the decision
        # scores of a classifier without predict_proba), value.
        probabilistic = classifier and hasattr(model, "predict_proba")
        anomaly = isinstance(_final(model), IsolationForest)
        plain = ["label", "probabilities" if probabilistic else "scores"] if classifier else ["value"]
        if anomaly:  # the -1/1 label, and the decision_function score users threshold on
            plain = ["label", "score"]
        rename_values(onnx_model, dict(zip(outputs, plain, strict=False)))
        width = getattr(_final(model), "n_outputs_", 1)
        if not classifier and isinstance(width, int) and width > 1:
            rows_of(onnx_model, "value", width)
        if probabilistic and isinstance(_final(model), BaseGradientBoosting):
            label_from_probabilities(onnx_model, model.classes_.tolist())
        roles = {"label": "label", "value": "score"} if anomaly else {"value": "value"}
        if classifier:
            roles = (
                {"label": "label", "probabilities": "probabilities"} if probabilistic else {"label": "label"}
            )
        takes_frame = hasattr(model, "feature_names_in_")

        def predict(table: pd.DataFrame) -> Predictions:
            x = table.iloc[:, 0] if reads_text else table if takes_frame else table.to_numpy()
            if probabilistic:
                return Predictions(label=model.predict(x), probabilities=model.predict_proba(x))
            if classifier:
                return Predictions(label=model.predict(x))
            if anomaly:
                score = np.asarray(model.decision_function(x), dtype=np.float64).reshape(len(table), 1)
                return Predictions(label=model.predict(x), value=score)
            return Predictions(value=np.asarray(model.predict(x)).reshape(len(table), -1))

        classes = model.classes_.tolist() if classifier else None
        return Converted(
            onnx_model=onnx_model,
            layout=layout,
            task="classification" if classifier else "other" if anomaly else "regression",
            features=features,
            estimator=_describe(model) + (f" (best_estimator_ of {found_by})" if found_by else ""),
            framework_version=sklearn.__version__,
            classes=classes,
            predict=predict,
            roles=roles,
        )


def best_of_search(model: Any) -> tuple[Any, str | None]:
    """A fitted GridSearchCV (any BaseSearchCV) predicts with its best_estimator_, refitted
    on all the data: that is the model to convert, and the search is named beside it."""
    if not isinstance(model, BaseSearchCV):
        return model, None
    name = type(model).__name__
    if not getattr(model, "refit", False) or not hasattr(model, "best_estimator_"):
        raise ConversionError(
            f"{name}(refit=False) holds no fitted model to convert: fit it with refit=True, or "
            "fit the best parameters on all the data and save that estimator"
        )
    return model.best_estimator_, name


def _initial_types(features: list[Feature], layout: Layout, number: Any) -> list[tuple[str, Any]]:
    if layout == "matrix":
        return [("input", number([None, len(features)]))]
    safe = safe_names([f.name for f in features])
    return [
        (s, StringTensorType([None, 1]) if f.dtype == "string" else number([None, 1]))
        for s, f in zip(safe, features, strict=True)
    ]


def _allows(estimator: Any, option: str) -> bool:
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import get_converter

    alias = sklearn_operator_name_map.get(type(estimator))
    return alias is not None and option in (get_converter(alias).get_allowed_options() or {})


def _options(model: Any, classifier: bool) -> dict[int, dict[str, Any]]:
    options: dict[int, dict[str, Any]] = {}
    if classifier:
        # An entry, even empty, keeps skl2onnx's pipeline parser from adding a ZipMap option
        # that LinearSVC or RidgeClassifier would refuse.
        options[id(_final(model))] = {"zipmap": False} if _allows(_final(model), "zipmap") else {}
    for part in _walk(model):
        if isinstance(part, _TEXT):
            # skl2onnx's tokenizer asks for en_US.UTF-8, which slim images do not have.
            options[id(part)] = {"locale": "C.UTF-8"}
            if _text.default_words(part):
                options[id(part)]["tokenexp"] = _text.WORD_TOKENS
    return options


def _sklearn_to_onnx(model: Any, initial_types: list[tuple[str, Any]], classifier: bool) -> Any:
    names = _input_names(model)
    mapping = {}
    if names is not None and len(names) == len(initial_types):
        mapping = dict(zip(names, (n for n, _ in initial_types), strict=True))
    model = _for_skl2onnx(model, mapping)
    try:
        return convert_sklearn(
            model, initial_types=initial_types, options=_options(model, classifier), target_opset=TARGET_OPSET
        )
    except (MissingShapeCalculator, MissingConverter) as exc:
        unsupported = next(
            (type(p).__name__ for p in _walk(model) if type(p).__name__ in str(exc)),
            type(_final(model)).__name__,
        )
        raise ConversionError(
            f"unsupported estimator {unsupported}: there is no ONNX converter for it; the README's "
            "Supported section lists what converts (replace it, or apply it before the model)"
        ) from exc


def _for_skl2onnx(model: Any, mapping: dict[str, str]) -> Any:
    """A copy of `model` as skl2onnx can read it: ColumnTransformers select columns by their
    safe names (skl2onnx matches them against the graph's input names, which it wants as
    identifiers), and one-hot output is dense (ONNX has no sparse intermediates; the
    values are the same)."""
    sparse = [p for p in _walk(model) if isinstance(p, KBinsDiscretizer) and p.encode == "onehot"]
    voting = [p for p in _walk(model) if isinstance(p, VotingClassifier) and p.flatten_transform]
    if all(k == v for k, v in mapping.items()) and not sparse and not voting:
        return model
    model = copy.deepcopy(model)
    for part in _walk(model):
        if isinstance(part, KBinsDiscretizer) and part.encode == "onehot":
            part.encode = "onehot-dense"
        if isinstance(part, VotingClassifier):
            part.flatten_transform = False  # shapes transform() only; skl2onnx wants it off

    def rename(columns: Any) -> Any:
        if isinstance(columns, str):
            return mapping.get(columns, columns)
        if isinstance(columns, list | tuple | np.ndarray) and all(isinstance(c, str) for c in columns):
            return [mapping.get(c, c) for c in columns]
        return columns

    for part in _walk(model):
        if isinstance(part, ColumnTransformer):
            part.transformers_ = [(n, t, rename(c)) for n, t, c in part.transformers_]
        names = vars(part).get("feature_names_in_")  # a Pipeline's is a read-only property
        if names is not None:
            part.feature_names_in_ = np.asarray([mapping.get(str(n), str(n)) for n in names], dtype=object)
    return model


def _whole_graph(model: Any, features: list[Feature], layout: Layout, classifier: bool, number: Any) -> Any:
    return _sklearn_to_onnx(model, _initial_types(features, layout, number), classifier)


def _input_names(model: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None


def _loads(onnx_model: Any) -> str | None:
    """Why ONNX Runtime refuses the graph (a missing float64 kernel), or None."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own error types are not exported
        return str(exc).splitlines()[0]
    return None


def _build_graph(model: Any, features: list[Feature], layout: Layout, classifier: bool) -> tuple[Any, bool]:
    """The most faithful graph ONNX Runtime loads, and whether its numbers are float64.

    scikit-learn computes in float64 and casts to float32 only at tree ensembles, so:
    float64 throughout (our tree converters cast to float32 themselves, see
    converters._trees); for a pipeline ending in gradient boosting, float64 preprocessing,
    then a cast, then skl2onnx's float32 trees; a bare tree ensemble reads float32, as
    scikit-learn would cast it. Where a float64 graph cannot be built or loaded (an operator
    without a float64 kernel: PolynomialFeatures, TfidfVectorizer's normaliser), float32.
    """
    final = _final(model)
    whole = partial(_whole_graph, model, features, layout, classifier)
    candidates: list[tuple[str, bool, Callable[[], Any]]] = []
    bare_trees = isinstance(final, _FLOAT32_TREES) and not isinstance(model, Pipeline)
    if isinstance(final, BaseGradientBoosting) and not bare_trees:
        split = partial(_split_at_trees, model, features, layout, classifier)
        candidates.append(("float64 then float32 trees", True, split))
    elif not bare_trees:
        candidates.append(("float64", True, partial(whole, DoubleTensorType)))
    candidates.append(("float32", False, partial(whole, FloatTensorType)))
    reasons = []
    for i, (label, precise, build) in enumerate(candidates):
        try:
            onnx_model = build()
        except ConversionError as exc:
            if i == len(candidates) - 1:
                raise
            reasons.append(f"{label}: {exc}")
            continue
        except (RuntimeError, ValueError, TypeError, NotImplementedError, KeyError) as exc:
            reasons.append(f"{label}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        refused = _loads(onnx_model)
        if refused is None:
            _restore_input_names(onnx_model, features, layout)
            return onnx_model, precise
        reasons.append(f"{label}: ONNX Runtime refuses the graph: {refused}")
    raise ConversionError(f"{_describe(model)} cannot be converted: " + "; ".join(reasons))


def _restore_input_names(onnx_model: Any, features: list[Feature], layout: Layout) -> None:
    if layout == "columns":
        names = [f.name for f in features]
        rename_values(onnx_model, dict(zip(safe_names(names), names, strict=True)))


def _split_at_trees(model: Any, features: list[Feature], layout: Layout, classifier: bool) -> Any:
    """Preprocessing in float64, a cast to float32, then the tree ensemble: where and how
    scikit-learn itself casts (thresholds sit exactly on scaled integers)."""
    from onnx import TensorProto

    front = Pipeline(model.steps[:-1])
    front_onnx = _sklearn_to_onnx(front, _initial_types(features, layout, DoubleTensorType), False)
    width = front_onnx.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    final = _final(model)
    if not width:
        width = int(final.n_features_in_)
    back_onnx = _sklearn_to_onnx(final, [("features", FloatTensorType([None, width]))], classifier)
    return cast_then(front_onnx, back_onnx, "features", TensorProto.FLOAT)


def _describe(model: Any) -> str:
    if isinstance(model, Pipeline):
        return "Pipeline(" + ", ".join(type(s).__name__ for _, s in model.steps) + ")"
    return type(model).__name__


CONVERTER = SklearnConverter()
