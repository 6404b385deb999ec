"""XGBoost estimators and boosters through onnxmltools."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import xgboost
from onnxmltools.convert import convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType

from converters._boosters import finish, numeric_features
from converters.errors import ConversionError
from converters.types import Converted

if TYPE_CHECKING:
    import pandas as pd

TARGET_OPSET = 15  # the highest onnxmltools 1.16 supports


class XGBoostConverter:
    framework = "xgboost"

    def convert(self, model: Any, sample: pd.DataFrame | None) -> Converted:
        booster = model if isinstance(model, xgboost.Booster) else model.get_booster()
        names = list(booster.feature_names) if booster.feature_names else None
        features, _ = numeric_features(names, booster.num_features(), sample)
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        classifier = objective.startswith(("binary:", "multi:"))
        if (
            isinstance(model, xgboost.Booster)
            and classifier
            and not objective.endswith(("logistic", "softprob"))
        ):
            raise ConversionError(f"XGBoost objective {objective} is not supported")
        # onnxmltools reads split features as f0, f1, ...: convert a copy without names.
        unnamed = copy.deepcopy(model)
        inner = unnamed if isinstance(unnamed, xgboost.Booster) else unnamed.get_booster()
        inner.feature_names = None
        inner.feature_types = None
        onnx_model = convert_xgboost(
            unnamed,
            initial_types=[("input", FloatTensorType([None, len(features)]))],
            target_opset=TARGET_OPSET,
        )
        if classifier:
            classes = (
                model.classes_.tolist()
                if hasattr(model, "classes_")
                else list(
                    range(
                        max(
                            2,
                            int(
                                json.loads(booster.save_config())["learner"]["learner_model_param"][
                                    "num_class"
                                ]
                            ),
                        )
                    )
                )
            )
        else:
            classes = None

        def predict_raw(x: np.ndarray) -> np.ndarray:
            if isinstance(model, xgboost.Booster):
                return np.asarray(booster.predict(xgboost.DMatrix(x, feature_names=booster.feature_names)))
            frame_or_x: Any = x
            if booster.feature_names is not None:
                import pandas as pd

                frame_or_x = pd.DataFrame(x, columns=booster.feature_names)
            return np.asarray(model.predict_proba(frame_or_x) if classifier else model.predict(frame_or_x))

        return finish(model, onnx_model, features, classifier, xgboost.__version__, classes, predict_raw)


CONVERTER = XGBoostConverter()
