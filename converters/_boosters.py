"""What XGBoost and LightGBM conversions share: a numeric matrix in, scikit-learn-style
estimators (or raw boosters) out, and the same predict contract for the parity check."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.errors import ConversionError
from converters.schema import align_sample, feature_names, infer_features
from converters.types import Converted, Predictions
from gateway.artifacts.manifest import Feature

if TYPE_CHECKING:
    import pandas as pd


def _squash(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", name)


def _users_names(model_names: list[str] | None, sample: pd.DataFrame | None) -> list[str] | None:
    """The sample's own column names where the booster kept only a mangled copy of them
    (LightGBM stores "mean radius" as "mean_radius"): the API speaks the user's names."""
    if model_names is None or sample is None or sample.shape[1] != len(model_names):
        return model_names
    columns = [str(c) for c in sample.columns]
    if columns != model_names and [_squash(c) for c in columns] == [_squash(n) for n in model_names]:
        return columns
    return model_names


def numeric_features(
    model_names: list[str] | None, n_features: int | None, sample: pd.DataFrame | None
) -> tuple[list[Feature], pd.DataFrame | None]:
    names = feature_names(_users_names(model_names, sample), n_features, sample)
    if sample is not None:
        sample = align_sample(sample, names)
    # Tree boosters route missing values themselves, so null is always allowed.
    features = infer_features(names, sample, {}, handles_missing=set(names))
    text = [f.name for f in features if f.dtype == "string"]
    if text:
        raise ConversionError(
            f"columns {text} hold text; encode them numerically before the booster "
            "(or wrap the booster in a scikit-learn Pipeline with an encoder)"
        )
    return features, sample


def finish(
    model: Any,
    onnx_model: Any,
    features: list[Feature],
    classifier: bool,
    framework_version: str,
    classes: list[Any] | None,
    predict_raw: Callable[[np.ndarray], np.ndarray],
) -> Converted:
    """Wrap a converted booster; predict_raw returns probabilities or values for a matrix."""
    outputs = [o.name for o in onnx_model.graph.output]
    roles = {"label": outputs[0], "probabilities": outputs[1]} if classifier else {"value": outputs[0]}
    labels = np.asarray(classes) if classes is not None else None

    def predict(table: pd.DataFrame) -> Predictions:
        x = table.to_numpy(dtype=np.float32, na_value=np.nan)
        out = np.asarray(predict_raw(x))
        if not classifier:
            return Predictions(value=out.reshape(len(table), -1))
        proba = out if out.ndim == 2 else np.column_stack([1.0 - out, out])
        if labels is None:
            raise ConversionError("a classifier without classes cannot be checked")
        return Predictions(label=labels[proba.argmax(axis=1)], probabilities=proba)

    return Converted(
        onnx_model=onnx_model,
        layout="matrix",
        task="classification" if classifier else "regression",
        features=features,
        estimator=type(model).__name__,
        framework_version=framework_version,
        classes=[c.item() if hasattr(c, "item") else c for c in classes] if classes else None,
        predict=predict,
        roles=roles,
    )
