"""An existing ONNX model: checked, described and passed through unchanged in meaning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from converters._graph import drop_zipmap
from converters.errors import ConversionError
from converters.onnx_info import signature
from converters.schema import align_sample, feature_names, infer_features
from converters.types import Converted, Predictions
from gateway.artifacts.manifest import Feature, Layout

if TYPE_CHECKING:
    import pandas as pd


def check_runs(model: Any, path: Path) -> None:
    """A model given as ONNX serves as given when ONNX Runtime opens it: that, not
    onnx.checker, is the proof, since the checker refuses graphs ONNX Runtime runs (an
    input or output declared without a shape, as exporters write them)."""
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own error types are not a common base
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path}: ONNX Runtime cannot load this model: {reason}") from exc


class OnnxConverter:
    framework = "onnx"

    def convert(self, model: Any, sample: pd.DataFrame | None) -> Converted:
        zipmap = drop_zipmap(model)
        inputs, outputs = signature(model)
        tabular = (
            len(inputs) == 1
            and len(inputs[0].shape) == 2
            and inputs[0].shape[1] > 0
            and inputs[0].datatype in ("FP32", "FP64")
        )
        features: list[Feature] = []
        layout: Layout = "tensors"
        if tabular:
            names = feature_names(None, inputs[0].shape[1], sample)
            if sample is not None:
                sample = align_sample(sample, names)
            features = infer_features(names, sample, {}, handles_missing=set())
            layout = "matrix"
        elif sample is not None:
            raise ConversionError(
                "this ONNX model takes tensors, not a table of features: convert it without --sample"
            )
        names_out = [o.name for o in outputs]
        roles = {n: n for n in names_out if n in ("label", "probabilities")}
        if zipmap is not None:  # skl2onnx's and CatBoost's exports: the label and the map
            others = [n for n in names_out if n != zipmap[0]]
            roles = {"probabilities": zipmap[0], **({"label": others[0]} if len(others) == 1 else {})}
        if not roles:
            roles = {"value": names_out[0]}
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

        def predict(table: pd.DataFrame) -> Predictions:
            dtype = np.float32 if inputs[0].datatype == "FP32" else np.float64
            result = dict(
                zip(names_out, session.run(None, {inputs[0].name: table.to_numpy(dtype=dtype)}), strict=True)
            )
            return Predictions(**{role: result[name] for role, name in roles.items()})

        return Converted(
            onnx_model=model,
            layout=layout,
            task="classification" if "probabilities" in roles else "other",
            features=features,
            estimator=model.graph.name or "onnx graph",
            framework_version=onnx.__version__,
            classes=zipmap[1] if zipmap is not None else None,
            predict=predict,
            roles=roles,
        )


CONVERTER = OnnxConverter()
