"""LightGBM estimators and boosters through onnxmltools."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightgbm
import numpy as np
from onnxmltools.convert import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from converters._boosters import finish, numeric_features
from converters.types import Converted

if TYPE_CHECKING:
    import pandas as pd

TARGET_OPSET = 15  # the highest onnxmltools 1.16 supports


class LightGBMConverter:
    framework = "lightgbm"

    def convert(self, model: Any, sample: pd.DataFrame | None) -> Converted:
        booster = model if isinstance(model, lightgbm.Booster) else model.booster_
        names = booster.feature_name()
        # LightGBM names unnamed columns Column_0, ...: those are positions, not names.
        if all(n == f"Column_{i}" for i, n in enumerate(names)):
            names = None
        features, _ = numeric_features(names, booster.num_feature(), sample)
        objective = str(booster.params.get("objective", "")) or booster.dump_model()["objective"]
        classifier = isinstance(model, lightgbm.LGBMClassifier) or objective.startswith(
            ("binary", "multiclass")
        )
        onnx_model = convert_lightgbm(
            model,
            initial_types=[("input", FloatTensorType([None, len(features)]))],
            zipmap=False,
            target_opset=TARGET_OPSET,
        )
        classes = None
        if classifier:
            classes = (
                model.classes_.tolist()
                if hasattr(model, "classes_")
                else list(range(max(2, booster.num_model_per_iteration())))
            )

        def predict_raw(x: np.ndarray) -> np.ndarray:
            if isinstance(model, lightgbm.Booster):
                return np.asarray(model.predict(x))
            frame_or_x: Any = x
            if names is not None:
                import pandas as pd

                frame_or_x = pd.DataFrame(x, columns=names)
            return np.asarray(model.predict_proba(frame_or_x) if classifier else model.predict(frame_or_x))

        return finish(model, onnx_model, features, classifier, lightgbm.__version__, classes, predict_raw)


CONVERTER = LightGBMConverter()
