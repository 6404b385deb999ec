"""CatBoost models through CatBoost's own ONNX export, the only faithful one (onnxmltools has
no CatBoost converter): a ZipMap ending a classifier becomes its probability tensor."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import catboost
import numpy as np
import onnx

from converters._boosters import finish, numeric_features
from converters._graph import drop_zipmap, label_from_probabilities, rename_values
from converters.errors import ConversionError
from converters.types import Converted

if TYPE_CHECKING:
    import pandas as pd

CLASSIFIER_LOSSES = ("Logloss", "CrossEntropy", "MultiClass")
# Losses whose predict() is exp(raw score), where the ONNX export writes the raw score.
EXPONENT_LOSSES = ("Poisson", "Tweedie")
# Several values a row: CatBoost's export writes a classifier with no classes for these.
MULTI_TARGET_LOSSES = (
    "MultiRMSE",
    "RMSEWithUncertainty",
    "MultiQuantile",
    "MultiLogloss",
    "MultiCrossEntropy",
)


def loss_of(model: Any) -> str:
    return str(model.get_all_params().get("loss_function", "")).split(":", maxsplit=1)[0]


def is_classifier(model: Any) -> bool:
    return isinstance(model, catboost.CatBoostClassifier) or loss_of(model) in CLASSIFIER_LOSSES


def load_cbm(path: Path) -> Any:
    """A `.cbm` file as the estimator class it was trained as, judged by its loss."""
    generic = catboost.CatBoost()
    generic.load_model(str(path))
    model = catboost.CatBoostClassifier() if is_classifier(generic) else catboost.CatBoostRegressor()
    model.load_model(str(path))
    return model


def _refuse_non_numeric(model: Any) -> None:
    """CatBoost's export documents numeric features only, yet writes a graph for a model
    with categorical ones (which then predicts something else): refuse before exporting."""
    names = list(model.feature_names_ or [])
    for kind, indices in (
        ("categorical", model.get_cat_feature_indices()),
        ("text", model.get_text_feature_indices()),
        ("embedding", model.get_embedding_feature_indices()),
    ):
        if len(indices):
            columns = [names[i] if i < len(names) else str(i) for i in indices]
            raise ConversionError(
                f"{type(model).__name__} was trained with {kind} features {columns} "
                f"({'cat_features' if kind == 'categorical' else kind + '_features'}); CatBoost's ONNX "
                "export takes numeric features only: encode those columns before CatBoost (e.g. an "
                "OrdinalEncoder) and refit without them as cat/text/embedding features"
            )


def _refuse_multi_target(model: Any) -> None:
    loss = loss_of(model)
    if loss in MULTI_TARGET_LOSSES:
        raise ConversionError(
            f"{type(model).__name__}(loss_function={loss!r}) predicts several values a row, which "
            "CatBoost's ONNX export cannot write: refit with a one-value loss such as RMSE "
            "(a model per target)"
        )


def _exp(onnx_model: Any, name: str) -> None:
    """exp() of the raw score `name`, as a Poisson or Tweedie model's predict() answers."""
    from onnx import helper

    raw = f"{name}_log"
    rename_values(onnx_model, {name: raw})
    for value in onnx_model.graph.output:
        if value.name == raw:
            value.name = name
    onnx_model.graph.node.append(helper.make_node("Exp", [raw], [name], name=f"{name}_exp"))


def _export(model: Any) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        model.save_model(str(path), format="onnx")
        return onnx.load(str(path))


def _rows_of_one(onnx_model: Any, name: str) -> None:
    """CatBoost declares a regressor's output as [N] and returns [N, 1]: declare what it returns."""
    from onnx import helper

    for i, value in enumerate(onnx_model.graph.output):
        if value.name == name:
            elem = value.type.tensor_type.elem_type
            onnx_model.graph.output[i].CopyFrom(helper.make_tensor_value_info(name, elem, [None, 1]))


class CatBoostConverter:
    framework = "catboost"

    def convert(self, model: Any, sample: pd.DataFrame | None) -> Converted:
        if not model.is_fitted():
            raise ConversionError(f"{type(model).__name__} is not fitted")
        _refuse_non_numeric(model)
        _refuse_multi_target(model)
        names = [str(n) for n in model.feature_names_] if model.feature_names_ else None
        if names is not None and names == [str(i) for i in range(len(names))]:
            names = None  # trained on an array: CatBoost numbers the columns
        features, _ = numeric_features(names, len(model.feature_names_ or []) or None, sample)
        onnx_model = _export(model)
        rename_values(onnx_model, {onnx_model.graph.input[0].name: "input"})
        zipmap = drop_zipmap(onnx_model)
        classifier = zipmap is not None
        classes: list[Any] | None = None
        if zipmap is not None:
            classes = [c.item() if hasattr(c, "item") else c for c in np.asarray(model.classes_).tolist()]
            if [str(c) for c in classes] != [str(c) for c in zipmap[1]]:
                raise ConversionError(
                    f"CatBoost's ONNX export keys probabilities by {zipmap[1]}, the model's classes "
                    f"are {classes}: convert the model saved by catboost>=1.2"
                )
            rename_values(onnx_model, {zipmap[0]: "probabilities"})
            # CatBoost documents its exported label as wrong for some binary models: the label
            # is the class of highest probability, as predict() answers.
            label_from_probabilities(onnx_model, classes)
        else:
            rename_values(onnx_model, {onnx_model.graph.output[0].name: "value"})
            _rows_of_one(onnx_model, "value")
            if loss_of(model) in EXPONENT_LOSSES:
                _exp(onnx_model, "value")

        def predict_raw(x: np.ndarray) -> np.ndarray:
            import pandas as pd

            frame = pd.DataFrame(x, columns=names)
            if classifier:
                return np.asarray(model.predict_proba(frame))
            return np.asarray(model.predict(frame), dtype=np.float64)

        return finish(model, onnx_model, features, classifier, catboost.__version__, classes, predict_raw)


CONVERTER = CatBoostConverter()
