"""scikit-learn estimators and pipelines through skl2onnx (plus our HistGradientBoosting fix)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import sklearn
from skl2onnx import convert_sklearn, supported_converters
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType
from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator
from sklearn.base import BaseEstimator, is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import NotFittedError
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder
from sklearn.utils.validation import check_is_fitted

from converters import _hist_gradient_boosting
from converters.errors import ConversionError
from converters.schema import align_sample, feature_names, infer_features, is_nan
from converters.types import Converted, Predictions
from gateway.manifest import Feature, Layout

if TYPE_CHECKING:
    import pandas as pd

# Standard ONNX opset 17 and ai.onnx.ml 3 load on every ONNX Runtime of the last years.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

_hist_gradient_boosting.register()
_HGB = (HistGradientBoostingClassifier, HistGradientBoostingRegressor)


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


def _known_categories(model: Any) -> dict[str, list[str]]:
    """Categories the fitted encoders accept, by input column name."""
    known: dict[str, list[str]] = {}
    for part in _walk(model):
        if not isinstance(part, ColumnTransformer):
            continue
        for _, transformer, columns in part.transformers_:
            encoders = [e for e in _walk(transformer) if isinstance(e, OneHotEncoder | OrdinalEncoder)]
            if not encoders or not all(isinstance(c, str) for c in np.atleast_1d(columns)):
                continue
            for column, cats in zip(np.atleast_1d(columns), encoders[0].categories_, strict=False):
                if not np.issubdtype(np.asarray(cats).dtype, np.number):
                    known[str(column)] = [str(c) for c in cats if c is not None and not is_nan(c)]
    return known


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


class SklearnConverter:
    framework = "sklearn"

    def convert(self, model: Any, sample: pd.DataFrame | None) -> Converted:
        try:
            check_is_fitted(model)
        except NotFittedError as exc:
            raise ConversionError(f"{type(model).__name__} is not fitted: {exc}") from exc
        names = feature_names(
            getattr(model, "feature_names_in_", None),
            getattr(model, "n_features_in_", None),
            sample,
        )
        if sample is not None:
            sample = align_sample(sample, names)
        parts = _walk(model)
        features = infer_features(names, sample, _known_categories(model), _imputed(model, names))
        uses_names = any(isinstance(p, ColumnTransformer) for p in parts)
        layout: Layout = "columns" if uses_names or any(f.dtype == "string" for f in features) else "matrix"
        classifier = is_classifier(model)
        # HistGradientBoosting thresholds are often data values themselves (quantile bins):
        # rounding an input to float32 moves it across them, so those models take float64.
        precise = any(isinstance(p, _HGB) for p in parts)
        if precise:
            features = [
                msgspec.structs.replace(f, dtype="float64") if f.dtype == "float32" else f for f in features
            ]
        onnx_model = self._to_onnx(model, features, layout, classifier, precise)
        outputs = [o.name for o in onnx_model.graph.output]
        roles = {"label": outputs[0], "probabilities": outputs[1]} if classifier else {"value": outputs[0]}
        takes_frame = hasattr(model, "feature_names_in_")

        def predict(table: pd.DataFrame) -> Predictions:
            x = table if takes_frame else table.to_numpy()
            if classifier:
                return Predictions(label=model.predict(x), probabilities=model.predict_proba(x))
            return Predictions(value=np.asarray(model.predict(x)).reshape(len(table), -1))

        classes = model.classes_.tolist() if classifier else None
        return Converted(
            onnx_model=onnx_model,
            layout=layout,
            task="classification" if classifier else "regression",
            features=features,
            estimator=_describe(model),
            framework_version=sklearn.__version__,
            classes=classes,
            predict=predict,
            roles=roles,
        )

    @staticmethod
    def _to_onnx(model: Any, features: list[Feature], layout: Layout, classifier: bool, precise: bool) -> Any:
        number = DoubleTensorType if precise else FloatTensorType
        if layout == "matrix":
            initial_types: list[tuple[str, Any]] = [("input", number([None, len(features)]))]
        else:
            initial_types = [
                (f.name, StringTensorType([None, 1]) if f.dtype == "string" else number([None, 1]))
                for f in features
            ]
        options = {id(_final(model)): {"zipmap": False}} if classifier else None
        try:
            return convert_sklearn(
                model, initial_types=initial_types, options=options, target_opset=TARGET_OPSET
            )
        except (MissingShapeCalculator, MissingConverter) as exc:
            unsupported = next(
                (type(p).__name__ for p in _walk(model) if type(p).__name__ in str(exc)),
                type(_final(model)).__name__,
            )
            supported = sorted(n.removeprefix("Sklearn") for n in supported_converters(from_sklearn=True))
            raise ConversionError(
                f"unsupported estimator {unsupported}; supported scikit-learn estimators: "
                + ", ".join(supported)
            ) from exc


def _describe(model: Any) -> str:
    if isinstance(model, Pipeline):
        return "Pipeline(" + ", ".join(type(s).__name__ for _, s in model.steps) + ")"
    return type(model).__name__


CONVERTER = SklearnConverter()
