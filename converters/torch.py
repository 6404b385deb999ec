"""PyTorch modules through torch.onnx, with a dynamic batch axis.

torch stays out of the lock file and the serving image: it is imported only here, only
when a PyTorch model is converted.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from converters._boosters import numeric_features
from converters.errors import ConversionError
from converters.types import Converted, Predictions

if TYPE_CHECKING:
    import pandas as pd

OPSET = 17


def _input_width(module: Any) -> int | None:
    # A TorchScript module's layers are RecursiveScriptModules that keep the original name.
    for layer in module.modules():
        if getattr(layer, "original_name", type(layer).__name__) == "Linear":
            return int(layer.weight.shape[1])
    return None


class TorchConverter:
    framework = "torch"

    def convert(self, model: Any, sample: pd.DataFrame | None) -> Converted:
        model.eval()
        width = sample.shape[1] if sample is not None else _input_width(model)
        if width is None:
            raise ConversionError("cannot tell the module's input width: pass --sample")
        features, _ = numeric_features(None, width, sample)
        example = torch.zeros((2, width), dtype=torch.float32)
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                # torch's exporter warns about its own internals (deprecations, ScriptMethod
                # signatures): nothing the user can act on.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (example,),
                    buffer,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,
                )
        except Exception as exc:  # torch raises many types for an unexportable module
            raise ConversionError(f"torch.onnx.export failed: {exc}") from exc
        onnx_model = onnx.load_model_from_string(buffer.getvalue())

        def predict(table: pd.DataFrame) -> Predictions:
            with torch.no_grad():
                x = torch.from_numpy(np.array(table.to_numpy(dtype=np.float32, na_value=np.nan)))
                return Predictions(value=model(x).numpy().reshape(len(table), -1))

        return Converted(
            onnx_model=onnx_model,
            layout="matrix",
            task="regression",
            features=features,
            estimator=type(model).__name__,
            framework_version=str(torch.__version__),
            classes=None,
            predict=predict,
            roles={"value": "output"},
        )


CONVERTER = TorchConverter()
